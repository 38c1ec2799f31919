//! The audit log of the embedded store as files of its own: append-only segment files of
//! framed, checksummed records, beside the sled data (which keeps only data).
//!
//! ```text
//! dir/audit-<first seq, 20 digits>.seg   segment = magic "PIIVAUD1" | frame*
//! dir/checkpoint                         the prune checkpoint: through u64 | crc u32 | mark
//! frame = len u32 | crc32 u32 | kind u8 | payload      (len counts kind and payload;
//!                                                       the crc covers them too)
//! kind 1 = event: seq u64 | encoded event (it carries its own chain MAC)
//! kind 2 = head: the signed head mark of the batch before it
//! ```
//! Integers are big-endian.
//!
//! - One writer (the audit writer's thread) appends a batch as its events and a head frame in
//!   one `write`, then one `fdatasync`: that is the group commit, one sync per batch. A new
//!   segment is synced with its directory before its first batch is acknowledged.
//! - Segments rotate at `max_segment_bytes`; pruning writes the checkpoint first, then
//!   deletes whole segments the checkpoint covers. Events before the checkpoint still in a
//!   segment are no longer returned.
//! - On open, the last segment is read to its end. Whatever follows the last whole frame
//!   (a frame cut short, a zeroed tail, a frame failing its checksum) was never
//!   acknowledged, since a batch is acknowledged only after its sync: it is cut, and the cut
//!   is reported (`SegmentLog::tail_cut`) so the audit log records it. Older segments are
//!   checked when read: a damaged frame there is reported at its sequence number
//!   (`StoreError::AuditDamaged`), never skipped.
//! - Readers see only what was synced: each segment's readable length moves after the sync.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use super::{AuditMarks, StoreError, StoreResult};

#[cfg(test)]
mod tests;

const MAGIC: &[u8; 8] = b"PIIVAUD1";
const KIND_EVENT: u8 = 1;
const KIND_HEAD: u8 = 2;
/// Frame header: length and checksum.
const HEADER: u64 = 8;
/// Largest frame read back: a damaged length must not make the reader allocate gigabytes.
const MAX_FRAME: u32 = 16 << 20;
/// One entry of a segment's sparse index per this many events.
const SPARSE_EVERY: u64 = 256;
/// Default size at which a segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
const CHECKPOINT_FILE: &str = "checkpoint";
const CUTS_FILE: &str = "tail-cuts";

/// What opening found after the last whole batch of the last segment, and cut. Kept in
/// `tail-cuts` (JSON lines) until the audit log has recorded it, so a cut made by an
/// offline command is still recorded at the vault's next start.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TailCut {
    /// The segment's file name.
    pub segment: String,
    /// Where the cut was made, and how many bytes were removed.
    pub offset: u64,
    pub bytes: u64,
    /// The last event kept (none when the log holds none).
    pub last_seq: Option<u64>,
}

/// One segment file.
#[derive(Clone, Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes readers may read: whole, synced frames.
    len: u64,
    /// (sequence number, offset of its frame), every `SPARSE_EVERY` events; built when the
    /// segment is first read (older segments) or while appending (the active one).
    sparse: Option<Arc<Vec<(u64, u64)>>>,
}

/// What readers see.
#[derive(Default)]
struct Index {
    segments: Vec<Segment>,
    last: Option<(u64, Vec<u8>)>,
    head: Option<Vec<u8>>,
    /// (through, mark) of the last prune.
    checkpoint: Option<(u64, Vec<u8>)>,
}

/// The active segment, owned by the writer.
struct Active {
    file: File,
    len: u64,
    /// Events in it (for the sparse index).
    events: u64,
    sparse: Vec<(u64, u64)>,
}

/// The segment files of one audit log.
pub struct SegmentLog {
    dir: PathBuf,
    max_segment_bytes: u64,
    writer: Mutex<Option<Active>>,
    index: RwLock<Index>,
    /// Cuts not yet recorded in the log (`TailCut`).
    cuts: Mutex<Vec<TailCut>>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::Backend(format!("audit log: {what} {}: {e}", path.display()))
}

fn segment_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

/// Syncs a directory, so a file created or removed in it stays so after a crash.
fn sync_dir(dir: &Path) -> StoreResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync directory", dir))
}

fn frame(kind: u8, payload: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = 1 + payload.iter().map(|p| p.len()).sum::<usize>();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in payload {
        crc.update(p);
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.push(kind);
    for p in payload {
        out.extend_from_slice(p);
    }
}

/// One frame read back.
enum Frame {
    Event(u64, Vec<u8>),
    Head(Vec<u8>),
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Bad {
    /// The file ends inside the frame.
    Short,
    /// A length of zero (a zeroed tail), too large, or an unknown kind.
    Damaged(&'static str),
    /// A whole frame of `size` bytes whose checksum does not match.
    Checksum { size: u64 },
}

/// Reads the frame at the reader's position; `Ok(None)` at the end of `limit` bytes.
fn read_frame(r: &mut impl Read, remaining: u64) -> Result<Option<(Frame, u64)>, Bad> {
    if remaining == 0 {
        return Ok(None);
    }
    if remaining < HEADER {
        return Err(Bad::Short);
    }
    let mut header = [0u8; HEADER as usize];
    r.read_exact(&mut header).map_err(|_| Bad::Short)?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 {
        return Err(Bad::Damaged("zeroed frame"));
    }
    if len > MAX_FRAME {
        return Err(Bad::Damaged("frame length out of range"));
    }
    if u64::from(len) > remaining - HEADER {
        return Err(Bad::Short);
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|_| Bad::Short)?;
    let size = HEADER + u64::from(len);
    if crc32fast::hash(&body) != crc {
        return Err(Bad::Checksum { size });
    }
    match body[0] {
        KIND_EVENT if body.len() >= 9 => {
            let seq = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
            Ok(Some((Frame::Event(seq, body[9..].to_vec()), size)))
        }
        KIND_HEAD => Ok(Some((Frame::Head(body[1..].to_vec()), size))),
        _ => Err(Bad::Damaged("unknown frame kind")),
    }
}

/// What a whole read of one segment found.
struct Walk {
    /// Offset after the last batch known to be whole (its head frame, with nothing
    /// unexplained before it): what follows is a torn tail.
    good_len: u64,
    /// Why there is a tail after `good_len`, if there is one.
    bad: Option<Bad>,
    /// Damage inside the log (kept, and reported when read), as the sequence number the
    /// first damaged frame holds: damage followed by a whole later batch, which was written
    /// only after the damaged one was synced, so it was acknowledged.
    damaged: Option<u64>,
    last: Option<(u64, Vec<u8>)>,
    head: Option<Vec<u8>>,
    sparse: Vec<(u64, u64)>,
    events: u64,
}

/// The state of a walk as of the end of a batch.
#[derive(Clone, Default)]
struct Whole {
    end: u64,
    last: Option<(u64, Vec<u8>)>,
    head: Option<Vec<u8>>,
    events: u64,
    sparse: usize,
}

/// Reads a whole segment, frame by frame, up to `len` bytes.
///
/// A batch is one write of its event frames and then its head frame, synced before the next
/// batch is written. After a crash, only the last batch can be torn, in any of its pages.
/// So damage (a frame failing its checksum, a frame that cannot be read, skipped by finding
/// the next valid frame) followed by a head frame and then by any valid frame of a later
/// batch is damage of an acknowledged batch: kept, and reported. Otherwise everything after
/// the last head frame before the damage is the torn tail.
fn walk(path: &Path, len: u64) -> StoreResult<Walk> {
    let file = File::open(path).map_err(io("cannot open", path))?;
    let mut r = BufReader::with_capacity(256 << 10, file);
    let mut magic = [0u8; 8];
    let torn = |bad| Walk {
        good_len: 0,
        bad: Some(bad),
        damaged: None,
        last: None,
        head: None,
        sparse: Vec::new(),
        events: 0,
    };
    if len < MAGIC.len() as u64 || r.read_exact(&mut magic).is_err() {
        return Ok(torn(Bad::Short));
    }
    if &magic != MAGIC {
        return Ok(torn(Bad::Damaged("not an audit segment")));
    }
    let mut offset = MAGIC.len() as u64;
    let mut whole = Whole {
        end: offset,
        ..Whole::default()
    };
    let (mut last, mut events, mut sparse) = (None::<(u64, Vec<u8>)>, 0u64, Vec::new());
    // Damage not yet shown to be inside the log, and whether a head frame followed it.
    let mut pending: Option<(u64, Bad)> = None;
    let mut head_after = false;
    let mut damaged = None;
    let mut tail = None;
    loop {
        let frame = read_frame(&mut r, len - offset);
        if let Ok(Some(_)) = &frame {
            if head_after {
                if let Some((seq, _)) = pending.take() {
                    damaged.get_or_insert(seq);
                }
                head_after = false;
            }
        }
        let due = last.as_ref().map_or(0, |(s, _)| s + 1);
        match frame {
            Ok(None) => break,
            Ok(Some((Frame::Event(seq, bytes), size))) => {
                if events.is_multiple_of(SPARSE_EVERY) {
                    sparse.push((seq, offset));
                }
                events += 1;
                last = Some((seq, bytes));
                offset += size;
            }
            Ok(Some((Frame::Head(mark), size))) => {
                offset += size;
                if pending.is_some() {
                    head_after = true;
                } else {
                    whole = Whole {
                        end: offset,
                        last: last.clone(),
                        head: Some(mark),
                        events,
                        sparse: sparse.len(),
                    };
                }
            }
            Err(Bad::Checksum { size }) => {
                pending.get_or_insert((due, Bad::Checksum { size }));
                offset += size;
            }
            Err(bad) => match resync(path, offset + 1, len)? {
                Some(next) => {
                    pending.get_or_insert((due, bad));
                    offset = next;
                    r.seek(SeekFrom::Start(offset))
                        .map_err(io("cannot seek", path))?;
                }
                None => {
                    tail = Some(bad);
                    break;
                }
            },
        }
    }
    let bad = match (pending, tail) {
        (Some((_, bad)), _) | (None, Some(bad)) => Some(bad),
        (None, None) if whole.end < len => Some(Bad::Short),
        (None, None) => None,
    };
    sparse.truncate(whole.sparse);
    Ok(Walk {
        good_len: whole.end,
        bad,
        damaged,
        last: whole.last,
        head: whole.head,
        sparse,
        events: whole.events,
    })
}

/// The offset of the first valid frame at or after `from` (a length in range, a known
/// kind, a matching checksum), if any: used to tell a torn tail (nothing valid after it)
/// from damage inside a segment.
fn resync(path: &Path, from: u64, len: u64) -> StoreResult<Option<u64>> {
    if from >= len {
        return Ok(None);
    }
    let mut file = File::open(path).map_err(io("cannot open", path))?;
    file.seek(SeekFrom::Start(from))
        .map_err(io("cannot seek", path))?;
    let mut rest = Vec::new();
    file.take(len - from)
        .read_to_end(&mut rest)
        .map_err(io("cannot read", path))?;
    for at in 0..rest.len() {
        let mut cursor = &rest[at..];
        let remaining = cursor.len() as u64;
        if let Ok(Some(_)) = read_frame(&mut cursor, remaining) {
            return Ok(Some(from + at as u64));
        }
    }
    Ok(None)
}

fn read_cuts(dir: &Path) -> StoreResult<Vec<TailCut>> {
    let path = dir.join(CUTS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

fn note_cut(dir: &Path, cut: &TailCut) -> StoreResult<()> {
    let path = dir.join(CUTS_FILE);
    let mut line = serde_json::to_string(cut)
        .map_err(|e| StoreError::Backend(format!("audit log: tail cut note: {e}")))?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io("cannot open", &path))?;
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &path))?;
    sync_dir(dir)
}

fn read_checkpoint(dir: &Path) -> StoreResult<Option<(u64, Vec<u8>)>> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", &path)(e)),
    };
    if bytes.len() < 12 {
        return Err(StoreError::Corrupt("audit checkpoint file"));
    }
    let through = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let crc = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let mark = bytes[12..].to_vec();
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..8]);
    h.update(&mark);
    if h.finalize() != crc {
        return Err(StoreError::Corrupt("audit checkpoint file"));
    }
    Ok(Some((through, mark)))
}

/// Writes the checkpoint file atomically (`storage::replace_file`).
fn write_checkpoint(dir: &Path, through: u64, mark: &[u8]) -> StoreResult<()> {
    let path = dir.join(CHECKPOINT_FILE);
    let mut h = crc32fast::Hasher::new();
    h.update(&through.to_be_bytes());
    h.update(mark);
    let mut bytes = through.to_be_bytes().to_vec();
    bytes.extend_from_slice(&h.finalize().to_be_bytes());
    bytes.extend_from_slice(mark);
    super::replace_file(&path, &bytes).map_err(io("cannot replace", &path))
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, cutting a torn tail off its last segment.
    pub fn open(dir: &Path, max_segment_bytes: u64) -> StoreResult<Self> {
        super::private_dir(dir).map_err(io("cannot create", dir))?;
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
            let entry = entry.map_err(io("cannot list", dir))?;
            let name = entry.file_name();
            if let Some(first_seq) = name.to_str().and_then(parse_segment_name) {
                let len = entry.metadata().map_err(io("cannot stat", dir))?.len();
                segments.push(Segment {
                    first_seq,
                    path: entry.path(),
                    len,
                    sparse: None,
                });
            }
        }
        segments.sort_by_key(|s| s.first_seq);
        let checkpoint = read_checkpoint(dir)?;
        let mut index = Index {
            checkpoint,
            ..Index::default()
        };
        let mut cuts = read_cuts(dir)?;
        let mut writer = None;
        if let Some(last) = segments.last_mut() {
            let w = walk(&last.path, last.len)?;
            if let Some(seq) = w.damaged {
                tracing::error!(
                    segment = %last.path.display(),
                    seq,
                    "audit log: a damaged event inside the last segment (kept; verification reports it)"
                );
            }
            if let Some(bad) = &w.bad {
                let name = last.path.file_name().unwrap_or_default();
                let cut = TailCut {
                    segment: name.to_string_lossy().into_owned(),
                    offset: w.good_len,
                    bytes: last.len - w.good_len,
                    last_seq: w.last.as_ref().map(|(s, _)| *s),
                };
                // Noted (durably) before the bytes go.
                note_cut(dir, &cut)?;
                cuts.push(cut);
                tracing::warn!(
                    segment = %last.path.display(),
                    offset = w.good_len,
                    bytes = last.len - w.good_len,
                    problem = ?bad,
                    "audit log: cut an unacknowledged torn tail off the last segment"
                );
            }
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&last.path)
                .map_err(io("cannot open", &last.path))?;
            if w.good_len < MAGIC.len() as u64 {
                // Created, then cut off before its header was synced: write it again.
                file.set_len(0)
                    .and_then(|()| file.write_all(MAGIC))
                    .map_err(io("cannot repair", &last.path))?;
            } else if w.bad.is_some() {
                file.set_len(w.good_len)
                    .map_err(io("cannot cut", &last.path))?;
            }
            let len = w.good_len.max(MAGIC.len() as u64);
            file.sync_all().map_err(io("cannot sync", &last.path))?;
            file.seek(SeekFrom::Start(len))
                .map_err(io("cannot seek", &last.path))?;
            last.len = len;
            last.sparse = Some(Arc::new(w.sparse.clone()));
            writer = Some(Active {
                file,
                len,
                events: w.events,
                sparse: w.sparse,
            });
            index.last = w.last;
            index.head = w.head;
        }
        // The last segment may hold no event yet (rotated, then stopped): the newest event
        // and head are then in the one before.
        if index.last.is_none() && segments.len() > 1 {
            let before = &segments[segments.len() - 2];
            let w = walk(&before.path, before.len)?;
            index.last = w.last;
            index.head = w.head;
        }
        index.segments = segments;
        Ok(Self {
            dir: dir.to_owned(),
            max_segment_bytes: max_segment_bytes.max(4096),
            writer: Mutex::new(writer),
            index: RwLock::new(index),
            cuts: Mutex::new(cuts),
        })
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The torn tails cut (by this open or an earlier one) and not yet recorded.
    pub fn tail_cuts(&self) -> Vec<TailCut> {
        self.cuts.lock().expect("audit cuts lock").clone()
    }

    /// Forgets the cuts `tail_cuts` returned, once the audit log recorded them.
    pub fn tail_cuts_recorded(&self) -> StoreResult<()> {
        let mut cuts = self.cuts.lock().expect("audit cuts lock");
        let path = self.dir.join(CUTS_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &path)(e)),
        }
        cuts.clear();
        Ok(())
    }

    /// True when the log holds no event and no checkpoint.
    pub fn is_empty(&self) -> bool {
        let index = self.index.read().expect("audit index lock");
        index.last.is_none() && index.checkpoint.is_none()
    }

    /// Starts a segment whose first event is `first_seq`: the file with its header,
    /// synced with the directory before anything is acknowledged from it.
    fn create_segment(&self, first_seq: u64) -> StoreResult<(Active, Segment)> {
        let path = self.dir.join(segment_name(first_seq));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("cannot create", &path))?;
        file.write_all(MAGIC)
            .and_then(|()| file.sync_all())
            .map_err(io("cannot write", &path))?;
        sync_dir(&self.dir)?;
        let len = MAGIC.len() as u64;
        Ok((
            Active {
                file,
                len,
                events: 0,
                sparse: Vec::new(),
            },
            Segment {
                first_seq,
                path,
                len,
                sparse: Some(Arc::new(Vec::new())),
            },
        ))
    }

    /// Appends `events` (in order, continuing the log) and the batch's `head` mark, and
    /// returns once they are on disk. On an error nothing of the batch is acknowledged;
    /// its bytes, if some were written, are cut before the next batch.
    pub fn append(&self, events: &[(u64, Vec<u8>)], head: &[u8]) -> StoreResult<()> {
        let Some((first, _)) = events.first() else {
            return Ok(());
        };
        let mut writer = self.writer.lock().expect("audit writer lock");
        let rotate = match &*writer {
            None => true,
            Some(a) => a.len >= self.max_segment_bytes && a.events > 0,
        };
        if rotate {
            let (active, segment) = self.create_segment(*first)?;
            *writer = Some(active);
            self.index
                .write()
                .expect("audit index lock")
                .segments
                .push(segment);
        }
        let active = writer.as_mut().expect("an active segment");
        let mut buf = Vec::with_capacity(events.iter().map(|(_, e)| e.len() + 32).sum());
        let mut sparse_added = Vec::new();
        for (seq, bytes) in events {
            if active.events.is_multiple_of(SPARSE_EVERY) {
                sparse_added.push((*seq, active.len + buf.len() as u64));
            }
            active.events += 1;
            frame(KIND_EVENT, &[&seq.to_be_bytes(), bytes], &mut buf);
        }
        frame(KIND_HEAD, &[head], &mut buf);
        let written = active
            .file
            .write_all(&buf)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            // Cut whatever part of the batch reached the file, so the next batch follows
            // the last acknowledged frame; if even that fails, a later open cuts it.
            let _ = active.file.set_len(active.len);
            let _ = active.file.seek(SeekFrom::Start(active.len));
            active.events -= events.len() as u64;
            return Err(StoreError::Backend(format!(
                "audit log: cannot write to {}: {e}",
                self.dir.display()
            )));
        }
        active.len += buf.len() as u64;
        // The readers' copy of the sparse index changes only every `SPARSE_EVERY` events.
        let sparse = (!sparse_added.is_empty()).then(|| {
            active.sparse.extend(sparse_added);
            Arc::new(active.sparse.clone())
        });
        let mut index = self.index.write().expect("audit index lock");
        if let Some(segment) = index.segments.last_mut() {
            segment.len = active.len;
            if sparse.is_some() {
                segment.sparse = sparse;
            }
        }
        index.last = events.last().cloned();
        index.head = Some(head.to_vec());
        Ok(())
    }

    /// Events with sequence numbers above `after` (and above the prune checkpoint), in
    /// order, at most `limit`.
    pub fn scan(&self, after: u64, limit: usize) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let (segments, start) = {
            let index = self.index.read().expect("audit index lock");
            let floor = index.checkpoint.as_ref().map_or(0, |(t, _)| *t);
            let start = after.max(floor);
            // The segment holding `start + 1`: the last one starting at or before it.
            let at = index
                .segments
                .partition_point(|s| s.first_seq <= start.saturating_add(1))
                .saturating_sub(1);
            (
                index.segments[at.min(index.segments.len())..].to_vec(),
                start,
            )
        };
        let mut out = Vec::new();
        for segment in &segments {
            if out.len() >= limit {
                break;
            }
            let sparse = match &segment.sparse {
                Some(s) => s.clone(),
                None => self.sparse_of(segment)?,
            };
            // A gap between segments is reported by verification as a missing event.
            Self::read_segment(segment, &sparse, start, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Builds (and keeps) the sparse index of a closed segment, checking it whole.
    fn sparse_of(&self, segment: &Segment) -> StoreResult<Arc<Vec<(u64, u64)>>> {
        let w = walk(&segment.path, segment.len)?;
        if w.bad.is_some() {
            // `read_segment` reads it from the start and reports the damaged sequence number.
            return Ok(Arc::new(Vec::new()));
        }
        let sparse = Arc::new(w.sparse);
        let mut index = self.index.write().expect("audit index lock");
        if let Some(s) = index
            .segments
            .iter_mut()
            .find(|s| s.first_seq == segment.first_seq)
        {
            s.sparse = Some(sparse.clone());
        }
        Ok(sparse)
    }

    /// Reads events above `start` from one segment into `out`, up to `limit` in all.
    fn read_segment(
        segment: &Segment, sparse: &[(u64, u64)], start: u64, limit: usize,
        out: &mut Vec<(u64, Vec<u8>)>,
    ) -> StoreResult<()> {
        let from = sparse
            .iter()
            .take_while(|(seq, _)| *seq <= start.saturating_add(1))
            .last()
            .copied();
        let (mut expect, mut offset) = match from {
            Some((seq, offset)) => (seq, offset),
            None => (segment.first_seq, MAGIC.len() as u64),
        };
        let mut file = File::open(&segment.path).map_err(io("cannot open", &segment.path))?;
        if offset == MAGIC.len() as u64 {
            let mut magic = [0u8; 8];
            if file.read_exact(&mut magic).is_err() || &magic != MAGIC {
                return Err(StoreError::AuditDamaged {
                    seq: segment.first_seq,
                    what: "segment header",
                });
            }
        } else {
            file.seek(SeekFrom::Start(offset))
                .map_err(io("cannot seek", &segment.path))?;
        }
        let mut r = BufReader::with_capacity(64 << 10, file);
        while out.len() < limit {
            match read_frame(&mut r, segment.len - offset) {
                Ok(None) => break,
                Ok(Some((Frame::Event(seq, bytes), size))) => {
                    offset += size;
                    expect = seq + 1;
                    if seq > start {
                        out.push((seq, bytes));
                    }
                }
                Ok(Some((Frame::Head(_), size))) => offset += size,
                Err(Bad::Short) => {
                    return Err(StoreError::AuditDamaged {
                        seq: expect,
                        what: "frame cut short",
                    })
                }
                Err(Bad::Damaged(what)) => {
                    return Err(StoreError::AuditDamaged { seq: expect, what })
                }
                Err(Bad::Checksum { .. }) => {
                    return Err(StoreError::AuditDamaged {
                        seq: expect,
                        what: "checksum mismatch",
                    })
                }
            }
        }
        Ok(())
    }

    /// The newest event.
    pub fn last(&self) -> Option<(u64, Vec<u8>)> {
        self.index.read().expect("audit index lock").last.clone()
    }

    /// The newest head mark and the prune checkpoint.
    pub fn marks(&self) -> AuditMarks {
        let index = self.index.read().expect("audit index lock");
        AuditMarks {
            head: index.head.clone(),
            checkpoint: index.checkpoint.as_ref().map(|(_, m)| m.clone()),
            nodes: Vec::new(),
        }
    }

    /// Records `checkpoint` (covering events up to `through`), then deletes the segments
    /// it covers whole. Returns how many events the checkpoint newly covers.
    pub fn prune(&self, through: u64, checkpoint: &[u8]) -> StoreResult<u64> {
        let _writer = self.writer.lock().expect("audit writer lock");
        let (before, first) = {
            let index = self.index.read().expect("audit index lock");
            let before = index.checkpoint.as_ref().map_or(0, |(t, _)| *t);
            let first = index.segments.first().map_or(u64::MAX, |s| s.first_seq);
            (before, first)
        };
        if through <= before {
            return Ok(0);
        }
        write_checkpoint(&self.dir, through, checkpoint)?;
        let mut index = self.index.write().expect("audit index lock");
        index.checkpoint = Some((through, checkpoint.to_vec()));
        let newest = index.last.as_ref().map_or(0, |(s, _)| *s);
        // A segment is covered when the next one starts at or before `through + 1`; the
        // active (last) segment always stays.
        let covered = index
            .segments
            .windows(2)
            .take_while(|w| w[1].first_seq <= through.saturating_add(1))
            .count();
        let gone: Vec<Segment> = index.segments.drain(..covered).collect();
        drop(index);
        for segment in &gone {
            std::fs::remove_file(&segment.path).map_err(io("cannot remove", &segment.path))?;
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        let low = before.max(first.saturating_sub(1));
        Ok(through.min(newest).saturating_sub(low))
    }
}
