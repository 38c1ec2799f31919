use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};

use super::*;

fn event(seq: u64) -> (u64, Vec<u8>) {
    (
        seq,
        format!("event number {seq} with some bytes").into_bytes(),
    )
}

fn batch(from: u64, n: u64) -> Vec<(u64, Vec<u8>)> {
    (from..from + n).map(event).collect()
}

fn all(log: &SegmentLog) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = log.scan(after, 7).expect("scan");
        let Some((last, _)) = page.last() else {
            return out;
        };
        after = *last;
        out.extend(page);
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn appends_scan_back_in_order_across_segments_and_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), 4096).expect("open");
    assert!(log.is_empty());
    for i in 0..40 {
        log.append(
            &batch(i * 10 + 1, 10),
            format!("head {}", i * 10 + 10).as_bytes(),
        )
        .expect("append");
    }
    assert!(segments(dir.path()).len() > 3, "segments rotate by size");
    assert_eq!(all(&log), batch(1, 400));
    assert_eq!(log.last(), Some(event(400)));
    assert_eq!(log.marks().head.as_deref(), Some(&b"head 400"[..]));
    // Any starting point, including the middle of a segment.
    assert_eq!(log.scan(123, 5).expect("scan"), batch(124, 5));
    drop(log);
    let log = SegmentLog::open(dir.path(), 4096).expect("reopen");
    assert_eq!(log.tail_cuts(), Vec::new());
    assert_eq!(all(&log), batch(1, 400));
    assert_eq!(log.last(), Some(event(400)));
    assert_eq!(log.marks().head.as_deref(), Some(&b"head 400"[..]));
    log.append(&batch(401, 3), b"head 403")
        .expect("append after reopen");
    assert_eq!(log.scan(399, 10).expect("scan"), batch(400, 4));
}

#[test]
fn a_torn_tail_is_cut_and_reported_and_the_log_continues() {
    for torn in ["mid-frame", "zeroed", "garbage"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("open");
        log.append(&batch(1, 5), b"head 5").expect("append");
        drop(log);
        let seg = segments(dir.path()).pop().expect("a segment");
        let good = std::fs::metadata(&seg).expect("stat").len();
        let mut f = OpenOptions::new().append(true).open(&seg).expect("open");
        match torn {
            // A batch cut short: a whole frame's header and part of its body.
            "mid-frame" => {
                let mut frame_bytes = Vec::new();
                frame(
                    KIND_EVENT,
                    &[&6u64.to_be_bytes(), b"never acknowledged"],
                    &mut frame_bytes,
                );
                f.write_all(&frame_bytes[..frame_bytes.len() - 4])
                    .expect("write");
            }
            "zeroed" => f.write_all(&[0u8; 300]).expect("write"),
            _ => f.write_all(&[0xA5u8; 50]).expect("write"),
        }
        drop(f);
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen");
        let cut = log.tail_cuts().pop().expect("the cut is reported");
        assert_eq!(cut.offset, good, "{torn}");
        assert!(cut.bytes > 0, "{torn}");
        assert_eq!(cut.last_seq, Some(5), "{torn}");
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), good, "{torn}");
        assert_eq!(all(&log), batch(1, 5), "{torn}");
        log.append(&batch(6, 2), b"head 7")
            .expect("append after the cut");
        drop(log);
        // Reported until recorded, also by a later open.
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen again");
        assert_eq!(log.tail_cuts(), vec![cut.clone()], "{torn}");
        log.tail_cuts_recorded().expect("recorded");
        drop(log);
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen again");
        assert_eq!(log.tail_cuts(), Vec::new(), "{torn}: nothing left to cut");
        assert_eq!(all(&log), batch(1, 7), "{torn}");
    }
}

#[test]
fn a_flipped_byte_in_an_older_segment_is_reported_at_its_sequence_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), 4096).expect("open");
    for i in 0..30 {
        log.append(&batch(i * 10 + 1, 10), b"head").expect("append");
    }
    drop(log);
    let first = segments(dir.path()).remove(0);
    // The fourth event's frame: header 8 + magic; frames of events 1..=3 before it.
    let mut frame_bytes = Vec::new();
    for (seq, bytes) in batch(1, 3) {
        frame(KIND_EVENT, &[&seq.to_be_bytes(), &bytes], &mut frame_bytes);
    }
    let at = MAGIC.len() as u64 + frame_bytes.len() as u64 + HEADER + 12;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first)
        .expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut f, &mut b).expect("read");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[b[0] ^ 0x01]).expect("write");
    drop(f);
    let log = SegmentLog::open(dir.path(), 4096).expect("an older segment is not read at open");
    assert_eq!(log.tail_cuts(), Vec::new());
    match log.scan(0, 100) {
        Err(StoreError::AuditDamaged { seq, .. }) => assert_eq!(seq, 4),
        other => panic!("expected damage at event 4, got {other:?}"),
    }
    // Past the damage, the log still reads.
    assert_eq!(log.scan(200, 3).expect("scan"), batch(201, 3));
}

#[test]
fn pruning_hides_what_the_checkpoint_covers_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), 4096).expect("open");
    for i in 0..30 {
        log.append(&batch(i * 10 + 1, 10), b"head").expect("append");
    }
    let before = segments(dir.path()).len();
    assert_eq!(log.prune(150, b"checkpoint 150").expect("prune"), 150);
    assert!(
        segments(dir.path()).len() < before,
        "covered segments are deleted"
    );
    assert_eq!(log.scan(0, 3).expect("scan"), batch(151, 3));
    assert_eq!(
        log.marks().checkpoint.as_deref(),
        Some(&b"checkpoint 150"[..])
    );
    assert_eq!(log.prune(150, b"again").expect("prune again"), 0);
    drop(log);
    let log = SegmentLog::open(dir.path(), 4096).expect("reopen");
    assert_eq!(
        log.marks().checkpoint.as_deref(),
        Some(&b"checkpoint 150"[..])
    );
    assert_eq!(all(&log), batch(151, 150));
    assert_eq!(log.prune(300, b"all").expect("prune"), 150);
    assert_eq!(log.scan(0, 3).expect("scan"), Vec::new());
    // The chain continues after a prune of everything.
    log.append(&batch(301, 1), b"head").expect("append");
    assert_eq!(all(&log), batch(301, 1));
}

#[test]
fn a_failed_append_leaves_no_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), 1 << 20).expect("open");
    log.append(&batch(1, 3), b"head 3").expect("append");
    // Make the segment read-only under the writer: the next write fails.
    let seg = segments(dir.path()).pop().expect("segment");
    let ro = OpenOptions::new().read(true).open(&seg).expect("open");
    let writer = log.writer.lock().expect("lock").take().expect("active");
    *log.writer.lock().expect("lock") = Some(Active { file: ro, ..writer });
    assert!(log.append(&batch(4, 2), b"head 5").is_err());
    assert_eq!(all(&log), batch(1, 3));
    assert_eq!(log.marks().head.as_deref(), Some(&b"head 3"[..]));
    drop(log);
    let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(all(&log), batch(1, 3));
}

/// Offset of event `seq`'s frame in a segment written as batches of `per` events each
/// followed by a head frame of `head_len` bytes.
fn offset_of(seq: u64, per: u64, head_len: usize) -> u64 {
    let mut at = MAGIC.len() as u64;
    for s in 1..seq {
        let mut f = Vec::new();
        frame(KIND_EVENT, &[&s.to_be_bytes(), &event(s).1], &mut f);
        at += f.len() as u64;
        if s % per == 0 {
            at += HEADER + 1 + head_len as u64;
        }
    }
    at
}

fn flip(path: &Path, at: u64) {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    f.seek(SeekFrom::Start(at)).expect("seek");
    let mut b = [0u8; 1];
    std::io::Read::read_exact(&mut f, &mut b).expect("read");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[b[0] ^ 0x40]).expect("write");
}

#[test]
fn damage_in_an_acknowledged_batch_of_the_last_segment_is_kept_and_reported_not_cut() {
    // In the body of event 2, and in the length of event 2's frame.
    for (what, delta) in [("body", HEADER + 12), ("length", 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("open");
        for i in 0..3 {
            log.append(&batch(i * 3 + 1, 3), b"head").expect("append");
        }
        drop(log);
        let seg = segments(dir.path()).pop().expect("segment");
        let len = std::fs::metadata(&seg).expect("stat").len();
        flip(&seg, offset_of(2, 3, 4) + delta);
        let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(
            log.tail_cuts(),
            Vec::new(),
            "{what}: acknowledged events are never cut"
        );
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), len, "{what}");
        assert_eq!(log.last(), Some(event(9)), "{what}");
        match log.scan(0, 100) {
            Err(StoreError::AuditDamaged { seq, .. }) => assert_eq!(seq, 2, "{what}"),
            other => panic!("{what}: expected damage at event 2, got {other:?}"),
        }
    }
}

#[test]
fn a_torn_last_batch_is_cut_back_to_the_batch_before_it_even_if_later_pages_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SegmentLog::open(dir.path(), 1 << 20).expect("open");
    log.append(&batch(1, 3), b"head").expect("append");
    log.append(&batch(4, 3), b"head").expect("append");
    drop(log);
    let seg = segments(dir.path()).pop().expect("segment");
    let batch_two = offset_of(4, 3, 4);
    // Event 5's page was lost (zeroed), events 4 and 6 and the head made it to disk.
    let at = offset_of(5, 3, 4);
    let mut f = OpenOptions::new().write(true).open(&seg).expect("open");
    f.seek(SeekFrom::Start(at + 3)).expect("seek");
    f.write_all(&[0u8; 20]).expect("zero");
    drop(f);
    let log = SegmentLog::open(dir.path(), 1 << 20).expect("reopen");
    let cut = log.tail_cuts().pop().expect("cut");
    assert_eq!(cut.offset, batch_two);
    assert_eq!(cut.last_seq, Some(3));
    assert_eq!(all(&log), batch(1, 3));
    assert_eq!(log.last(), Some(event(3)));
}
