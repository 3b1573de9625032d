//! The journal's log: segment files of checksummed records, appended to and never rewritten, in a
//! directory of their own. A record is one acknowledged request's alerts: its place (`seq`, rising
//! by one per record), when it was received, how many alerts it holds and the alerts as one JSON
//! array, behind its length and the CRC-32 of what follows the head (the layout of Prometheus's WAL
//! records, which also live in segment files). Writing a record is one `write` of its bytes; a
//! SQLite table made each commit write whole 4 KiB pages to a WAL (the row's leaf, the sequence
//! table, the free list its deletes had fed) and a checkpoint copy them again, about a fifth of
//! the process's time under alert-load.
//!
//! Durable as the store's own commits are (SQLite's WAL with `synchronous = NORMAL`): a write is
//! in the operating system's hands before the sender is answered, so a crash of the process loses
//! nothing; a power cut may lose the last writes, as it may the store's. A write that fails
//! half-way (a full disk) is cut off again before anything else is written, so a record never
//! follows a broken one; the last segment's torn tail, which only a crash of the machine leaves,
//! is cut off when the log is opened. Damage anywhere else is refused, not skipped.
//!
//! A segment past [`SEGMENT_BYTES`] is closed and the next record begins a new one, named by its
//! place; a segment whose records are all analysed is deleted once it is closed or full. This
//! module owns the bytes; what is analysed is the caller's to say.

use crate::{Result, StoreError};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a segment begins with: the format's name and version.
const MAGIC: &[u8; 8] = b"CAIRNJ01";
/// A record's head: the length of the rest, and the CRC-32 of the rest.
const HEAD: usize = 8;
/// The rest begins with the record's place, its time of receipt and its count of alerts.
const FIXED: usize = 8 + 8 + 4;
/// No record is longer (a request body is at most a few MiB): a longer length is damage.
const MAX_RECORD: usize = 1 << 30;
/// A segment this long takes no more records.
pub(super) const SEGMENT_BYTES: u64 = 8 << 20;

/// A record as written and read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Record<'a> {
    pub seq: i64,
    pub received_ms: i64,
    pub alerts: u32,
    pub body: &'a str,
}

impl Record<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&((FIXED + self.body.len()) as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        out.extend_from_slice(&self.alerts.to_le_bytes());
        out.extend_from_slice(self.body.as_bytes());
        let crc = crc32fast::hash(&out[start + HEAD..]);
        out[start + 4..start + HEAD].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A segment's records in order, how many of its bytes hold them (header included), and what
/// stopped the reading before its end, if anything did.
struct Parsed<'a> {
    records: Vec<Record<'a>>,
    good: usize,
    problem: Option<String>,
}

fn parse(bytes: &[u8]) -> Parsed<'_> {
    let mut p = Parsed { records: Vec::new(), good: 0, problem: None };
    if bytes.len() < MAGIC.len() {
        p.problem = Some("the segment's header is cut short".into());
        return p;
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        p.problem = Some("it is not an intake log segment (wrong header)".into());
        return p;
    }
    p.good = MAGIC.len();
    while p.good < bytes.len() {
        match record_at(&bytes[p.good..]) {
            Ok((r, len)) => {
                if p.records.last().is_some_and(|l: &Record<'_>| l.seq >= r.seq) {
                    p.problem = Some(format!("record {} follows record {}: places must rise", r.seq, p.records[p.records.len() - 1].seq));
                    return p;
                }
                p.records.push(r);
                p.good += len;
            }
            Err(problem) => {
                p.problem = Some(problem);
                return p;
            }
        }
    }
    p
}

/// The record at the start of `b` and its length in bytes.
fn record_at(b: &[u8]) -> std::result::Result<(Record<'_>, usize), String> {
    if b.len() < HEAD {
        return Err("a record's head is cut short".into());
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if !(FIXED..=MAX_RECORD).contains(&len) {
        return Err(format!("a record's length ({len}) is not one a record can have"));
    }
    let Some(rest) = b.get(HEAD..HEAD + len) else { return Err("a record is cut short".into()) };
    if crc32fast::hash(rest) != crc {
        return Err("a record's checksum does not match".into());
    }
    let int = |at: usize| i64::from_le_bytes(rest[at..at + 8].try_into().unwrap_or_default());
    let alerts = u32::from_le_bytes(rest[16..20].try_into().unwrap_or_default());
    let body = std::str::from_utf8(&rest[FIXED..]).map_err(|_| "a record's body is not UTF-8".to_string())?;
    Ok((Record { seq: int(0), received_ms: int(8), alerts, body }, HEAD + len))
}

/// Whether what stopped the reading of a segment at `good` is a write cut short by a crash of the
/// machine: the header cut short, or a last record that reaches the end of the file or is followed
/// only by zeros (blocks the file system had allotted and not yet written). Anything else is damage.
fn torn_tail(bytes: &[u8], good: usize) -> bool {
    if good < MAGIC.len() {
        return bytes.len() < MAGIC.len();
    }
    let rest = &bytes[good..];
    if rest.len() < HEAD || rest.iter().all(|b| *b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    (FIXED..=MAX_RECORD).contains(&len) && HEAD + len >= rest.len()
}

/// Where a segment's bytes are.
#[derive(Debug)]
enum Backing {
    /// A file; open for appending while it is the segment written to.
    File { path: PathBuf, file: Option<File> },
    /// Memory, for an in-memory store.
    Memory(Vec<u8>),
}

#[derive(Debug)]
struct Segment {
    backing: Backing,
    /// Its bytes, header included: all of them whole records.
    len: u64,
    /// Its last record's place; none while it holds none.
    last_seq: Option<i64>,
}

impl Segment {
    fn bytes(&self) -> Result<Vec<u8>> {
        match &self.backing {
            Backing::Memory(b) => Ok(b.clone()),
            Backing::File { path, .. } => read_file(path),
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Database(format!("intake log: cannot {what} {}: {e}", path.display()))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_error("read", path, e))
}

/// The segment files in `dir`, oldest first (named by their first place, zero-padded).
fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<(i64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let path = entry.map_err(|e| io_error("list", dir, e))?.path();
        let first = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<i64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Writes `buf` to the end of `f`; or, when `fail_half_way`, half of it and then fails as a full
/// disk does.
fn write_all(f: &mut File, buf: &[u8], fail_half_way: bool) -> std::io::Result<()> {
    if fail_half_way {
        f.write_all(&buf[..buf.len() / 2])?;
        return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device (made to fail)"));
    }
    f.write_all(buf)
}

/// The log: its segments, oldest first (the last is the one written to), and the place and
/// alert count of every record they hold, oldest first.
#[derive(Debug)]
pub(in crate::sqlite) struct Log {
    /// None: the segments are in memory.
    dir: Option<PathBuf>,
    segments: VecDeque<Segment>,
    rows: VecDeque<(i64, u32)>,
    next_seq: i64,
    segment_bytes: u64,
    /// A write failed half-way and cutting it off failed too: the length the last segment must be
    /// cut back to before anything more is written to it.
    cut_to: Option<u64>,
    /// The directory's `LOCK` file, locked while this log is open: one writer at a time, since
    /// opening cuts a torn tail off, which would cut another writer's record in half.
    _lock: Option<File>,
    /// A write holding a body with this in it writes half its bytes and fails, as on a full disk
    /// (for tests).
    #[cfg(test)]
    pub(in crate::sqlite) fail_half_way: Option<String>,
}

impl Log {
    pub(super) fn in_memory() -> Log {
        Log {
            dir: None,
            segments: VecDeque::new(),
            rows: VecDeque::new(),
            next_seq: 1,
            segment_bytes: SEGMENT_BYTES,
            cut_to: None,
            _lock: None,
            #[cfg(test)]
            fail_half_way: None,
        }
    }

    /// Opens the log in `dir`, creating the directory if needed; cuts off a torn tail of the last
    /// segment and refuses damage anywhere else. Refused while another process (or another store
    /// in this one) has the log open: [`read_dir_after`] is how to look in meanwhile.
    pub(super) fn open(dir: &Path) -> Result<Log> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| io_error("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Database(format!(
                    "the intake journal {} is open in another process (a running `cairn serve`?); a store that only reads can be opened read-only",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_error("lock", &lock_path, e)),
        }
        let mut log = Log { dir: Some(dir.to_owned()), _lock: Some(lock), ..Log::in_memory() };
        let files = segment_files(dir)?;
        for (i, path) in files.iter().enumerate() {
            let last = i + 1 == files.len();
            let bytes = read_file(path)?;
            let parsed = parse(&bytes);
            let mut good = parsed.good as u64;
            if let Some(problem) = &parsed.problem {
                if !(last && torn_tail(&bytes, parsed.good)) {
                    return Err(StoreError::Corrupt(format!("intake log {} is damaged at byte {}: {problem}", path.display(), parsed.good)));
                }
                // Never acknowledged whole: cut off (a header cut short is written again).
                let f = OpenOptions::new().write(true).open(path).map_err(|e| io_error("open", path, e))?;
                f.set_len(good).map_err(|e| io_error("cut the torn tail of", path, e))?;
                if good == 0 {
                    (&f).write_all(MAGIC).map_err(|e| io_error("write", path, e))?;
                    good = MAGIC.len() as u64;
                }
            }
            if let (Some(prev), Some(first)) = (log.rows.back(), parsed.records.first())
                && prev.0 >= first.seq
            {
                return Err(StoreError::Corrupt(format!("intake log {} begins at place {} after place {}", path.display(), first.seq, prev.0)));
            }
            log.rows.extend(parsed.records.iter().map(|r| (r.seq, r.alerts)));
            let file = if last { Some(OpenOptions::new().append(true).open(path).map_err(|e| io_error("open", path, e))?) } else { None };
            log.segments.push_back(Segment {
                backing: Backing::File { path: path.clone(), file },
                len: good,
                last_seq: parsed.records.last().map(|r| r.seq),
            });
        }
        log.next_seq = log.rows.back().map_or(1, |r| r.0 + 1);
        Ok(log)
    }

    /// The place the next record takes.
    pub(super) fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Records written from now on are placed after `seq`.
    pub(super) fn place_after(&mut self, seq: i64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Appends records at the next places, `(received_ms, alerts, body)` each, with one write:
    /// all are stored or (on an error) none. Returns their places.
    pub(super) fn append<'b>(&mut self, records: impl Iterator<Item = (i64, u32, &'b str)>) -> Result<Vec<i64>> {
        let mut buf = Vec::new();
        let mut placed = Vec::new();
        #[cfg_attr(not(test), allow(unused_mut))]
        let mut fail = false;
        for (i, (received_ms, alerts, body)) in records.enumerate() {
            if FIXED + body.len() > MAX_RECORD {
                return Err(StoreError::Database(format!("intake log: a record of {} bytes is longer than a record may be", body.len())));
            }
            #[cfg(test)]
            {
                fail |= self.fail_half_way.as_deref().is_some_and(|p| body.contains(p));
            }
            let seq = self.next_seq + i as i64;
            Record { seq, received_ms, alerts, body }.encode(&mut buf);
            placed.push((seq, alerts));
        }
        if placed.is_empty() {
            return Ok(Vec::new());
        }
        let active = self.writable()?;
        let before = active.len;
        match &mut active.backing {
            Backing::Memory(b) => b.extend_from_slice(&buf),
            Backing::File { path, file } => {
                let f = file.as_mut().ok_or_else(|| StoreError::Database(format!("intake log: {} is not open for writing", path.display())))?;
                if let Err(e) = write_all(f, &buf, fail) {
                    // Cut off what part of it reached the file: a record must follow a whole one.
                    let uncut = f.set_len(before).is_err();
                    let err = io_error("write to", path, e);
                    if uncut {
                        self.cut_to = Some(before);
                    }
                    return Err(err);
                }
            }
        }
        active.len += buf.len() as u64;
        active.last_seq = placed.last().map(|p| p.0);
        self.next_seq += placed.len() as i64;
        self.rows.extend(placed.iter().copied());
        Ok(placed.into_iter().map(|p| p.0).collect())
    }

    /// The segment to write to: the last one, unless it is full or there is none, when a new one
    /// is begun (named by the next place). A cut still owed is made first.
    fn writable(&mut self) -> Result<&mut Segment> {
        if let Some(len) = self.cut_to {
            if let Some(Segment { backing: Backing::File { path, file: Some(f) }, .. }) = self.segments.back() {
                f.set_len(len).map_err(|e| io_error("cut a half-written record off", path, e))?;
            }
            self.cut_to = None;
        }
        let full = self.segments.back().is_none_or(|s| s.len >= self.segment_bytes && s.last_seq.is_some());
        if full {
            let backing = match &self.dir {
                None => Backing::Memory(MAGIC.to_vec()),
                Some(dir) => {
                    let path = dir.join(format!("{:020}.log", self.next_seq));
                    let mut f = OpenOptions::new().append(true).create_new(true).open(&path).map_err(|e| io_error("create", &path, e))?;
                    if let Err(e) = f.write_all(MAGIC) {
                        let _ = std::fs::remove_file(&path);
                        return Err(io_error("write to", &path, e));
                    }
                    if let Some(Segment { backing: Backing::File { file, .. }, .. }) = self.segments.back_mut() {
                        *file = None;
                    }
                    Backing::File { path, file: Some(f) }
                }
            };
            self.segments.push_back(Segment { backing, len: MAGIC.len() as u64, last_seq: None });
        }
        self.segments.back_mut().ok_or_else(|| StoreError::Database("intake log: no segment to write to".into()))
    }

    /// Forgets the records placed at or before `through` (analysed), and deletes each segment
    /// that holds only those once it is closed or full. A segment that cannot be deleted is kept
    /// for the next call; its records are behind the mark either way.
    pub(super) fn forget_through(&mut self, through: i64) {
        while self.rows.front().is_some_and(|r| r.0 <= through) {
            self.rows.pop_front();
        }
        while let Some(first) = self.segments.front() {
            let closed = self.segments.len() > 1 || first.len >= self.segment_bytes;
            if !closed || first.last_seq.is_none_or(|l| l > through) {
                break;
            }
            if let Backing::File { path, .. } = &first.backing
                && std::fs::remove_file(path).is_err()
            {
                break;
            }
            self.segments.pop_front();
        }
    }

    /// The place of the first record after `through`.
    pub(super) fn first_after(&self, through: i64) -> Option<i64> {
        self.rows.iter().map(|r| r.0).find(|&s| s > through)
    }

    /// How many alerts the records after `through` hold.
    pub(super) fn alerts_after(&self, through: i64) -> u64 {
        self.rows.iter().filter(|r| r.0 > through).map(|r| u64::from(r.1)).sum()
    }

    /// The records after `through`, oldest first, whole, until they hold at least `limit` alerts;
    /// handed to `each` as they are read (the bytes are the segment's, read once).
    pub(super) fn read_after(&self, through: i64, limit: usize, mut each: impl FnMut(Record<'_>) -> Result<()>) -> Result<()> {
        let mut alerts = 0usize;
        for seg in self.segments.iter().filter(|s| s.last_seq.is_some_and(|l| l > through)) {
            let bytes = seg.bytes()?;
            // Its whole records only: past them may lie a failed write's bytes not yet cut off.
            let parsed = parse(&bytes[..bytes.len().min(seg.len as usize)]);
            if let Some(problem) = parsed.problem {
                return Err(StoreError::Corrupt(format!("intake log damaged at byte {}: {problem}", parsed.good)));
            }
            for r in parsed.records.into_iter().filter(|r| r.seq > through) {
                if alerts >= limit {
                    return Ok(());
                }
                alerts += r.alerts as usize;
                each(r)?;
            }
        }
        Ok(())
    }

    /// How many records the log holds, analysed or not (for tests).
    #[cfg(test)]
    pub(in crate::sqlite) fn records(&self) -> usize {
        self.segments.iter().map(|s| s.bytes().map_or(0, |b| parse(&b).records.len())).sum()
    }

    /// How many segments it has (for tests).
    #[cfg(test)]
    pub(super) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Writes every record's body again as `body` (for tests that tell memory from the file).
    #[cfg(test)]
    pub(in crate::sqlite) fn rewrite_bodies(&mut self, body: &str) {
        for seg in &mut self.segments {
            let bytes = seg.bytes().unwrap();
            let mut out = MAGIC.to_vec();
            for r in parse(&bytes).records {
                Record { body, ..r }.encode(&mut out);
            }
            seg.len = out.len() as u64;
            match &mut seg.backing {
                Backing::Memory(b) => *b = out,
                Backing::File { path, file } => {
                    std::fs::write(&*path, &out).unwrap();
                    if file.is_some() {
                        *file = Some(OpenOptions::new().append(true).open(&*path).unwrap());
                    }
                }
            }
        }
    }

    /// Sets the length past which a segment is closed (for tests).
    #[cfg(test)]
    pub(super) fn set_segment_bytes(&mut self, bytes: u64) {
        self.segment_bytes = bytes;
    }
}

/// The records in the log at `dir` after `through`, read without changing a byte: a torn last
/// record (one being written as it is read) ends the reading. For inspecting a data directory,
/// also while its server runs.
pub(super) fn read_dir_after(dir: &Path, through: i64, mut each: impl FnMut(Record<'_>) -> Result<()>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let files = segment_files(dir)?;
    for (i, path) in files.iter().enumerate() {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            // Deleted since it was listed: all its records were analysed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("read", path, e)),
        };
        let parsed = parse(&bytes);
        if let Some(problem) = &parsed.problem
            && i + 1 < files.len()
        {
            return Err(StoreError::Corrupt(format!("intake log {} is damaged at byte {}: {problem}", path.display(), parsed.good)));
        }
        for r in parsed.records.into_iter().filter(|r| r.seq > through) {
            each(r)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(log: &Log, through: i64) -> Vec<(i64, String)> {
        let mut out = Vec::new();
        log.read_after(through, usize::MAX, |r| {
            out.push((r.seq, r.body.to_string()));
            Ok(())
        })
        .unwrap();
        out
    }

    /// What a run of the property below does to the log.
    #[derive(Debug, Clone)]
    enum Op {
        /// Appends a write of records with these body lengths; it fails half-way when `fails`.
        Append { lens: Vec<usize>, fails: bool },
        /// Marks records analysed through the n-th of those written so far (and forgets them).
        Analyse(usize),
        /// Closes the log and opens it again from its files.
        Reopen,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (proptest::collection::vec(0usize..120, 1..4), proptest::bool::weighted(0.2)).prop_map(|(lens, fails)| Op::Append { lens, fails }),
            2 => (0usize..64).prop_map(Op::Analyse),
            1 => Just(Op::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the order of writes (some failing half-way, as on a full disk), analyses,
        /// segment turns and restarts, the log hands back exactly the records whose write
        /// succeeded and that are not yet analysed, in order, with their places; and it never keeps
        /// a segment whose records are all analysed once a newer one exists.
        #[test]
        fn the_log_hands_back_every_acknowledged_record_not_yet_analysed(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let open = || {
                let mut log = Log::open(dir.path()).unwrap();
                log.set_segment_bytes(256);
                log.fail_half_way = Some("FAIL".into());
                log
            };
            let mut log = open();
            let mut acked: Vec<(i64, String)> = Vec::new();
            let mut through = 0i64;
            for op in ops {
                match op {
                    Op::Append { lens, fails } => {
                        let bodies: Vec<String> = lens
                            .iter()
                            .enumerate()
                            .map(|(i, n)| format!("{}{}", if fails && i == 0 { "FAIL" } else { "" }, "x".repeat(*n)))
                            .collect();
                        let placed = log.append(bodies.iter().map(|b| (0, 1, b.as_str())));
                        match placed {
                            Ok(seqs) => {
                                proptest::prop_assert!(!fails);
                                acked.extend(seqs.into_iter().zip(bodies));
                            }
                            Err(_) => proptest::prop_assert!(fails),
                        }
                    }
                    Op::Analyse(n) => {
                        if let Some((seq, _)) = acked.get(n.min(acked.len().saturating_sub(1))) {
                            through = through.max(*seq);
                        }
                        log.forget_through(through);
                    }
                    Op::Reopen => {
                        drop(log);
                        log = open();
                        log.place_after(through);
                    }
                }
                let want: Vec<(i64, String)> = acked.iter().filter(|(s, _)| *s > through).cloned().collect();
                proptest::prop_assert_eq!(bodies(&log, through), want.clone());
                proptest::prop_assert_eq!(log.alerts_after(through), want.len() as u64);
                proptest::prop_assert_eq!(log.first_after(through), want.first().map(|w| w.0));
            }
            log.forget_through(through);
            let files = segment_files(dir.path()).unwrap();
            for path in files.iter().take(files.len().saturating_sub(1)) {
                let bytes = std::fs::read(path).unwrap();
                proptest::prop_assert!(parse(&bytes).records.iter().any(|r| r.seq > through), "{} is all analysed and closed, and kept", path.display());
            }
        }
    }

    #[test]
    fn a_second_writer_is_refused_while_the_log_is_open_and_readers_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append([(1, 1, "[1]")].into_iter()).unwrap();
        let err = Log::open(dir.path()).unwrap_err();
        assert!(matches!(&err, StoreError::Database(m) if m.contains("open in another process")), "{err:?}");
        let mut seen = 0;
        read_dir_after(dir.path(), 0, |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 1, "a reader looks in without the lock");
        drop(log);
        assert_eq!(Log::open(dir.path()).unwrap().next_seq(), 2, "closed, it opens again");
    }

    #[test]
    fn records_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(log.append([(5, 2, "[1,2]"), (6, 1, "[3]")].into_iter()).unwrap(), [1, 2]);
        assert_eq!(log.append([(7, 1, "[4]")].into_iter()).unwrap(), [3]);
        assert_eq!(log.alerts_after(1), 2);
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(bodies(&log, 1), [(2, "[3]".to_string()), (3, "[4]".to_string())]);
        assert_eq!(log.next_seq(), 4);
    }

    #[test]
    fn a_torn_tail_is_cut_off_on_open_and_damage_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.append([(1, 1, "[\"a\"]"), (2, 1, "[\"b\"]")].into_iter()).unwrap();
        drop(log);
        let seg = segment_files(dir.path()).unwrap().remove(0);
        let whole = std::fs::read(&seg).unwrap();
        // Half a record more, as a crash of the machine mid-write leaves it.
        let mut torn = whole.clone();
        let mut extra = Vec::new();
        Record { seq: 3, received_ms: 3, alerts: 1, body: "[\"c\"]" }.encode(&mut extra);
        torn.extend_from_slice(&extra[..extra.len() / 2]);
        std::fs::write(&seg, &torn).unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(&seg).unwrap(), whole, "cut back to the whole records");
        assert_eq!(log.append([(4, 1, "[\"d\"]")].into_iter()).unwrap(), [3], "the cut-off place is taken again");
        assert_eq!(bodies(&log, 0).len(), 3);
        drop(log);
        // A changed byte inside a record that is not the last: the checksum refuses it.
        let mut bad = std::fs::read(&seg).unwrap();
        bad[MAGIC.len() + HEAD + FIXED] ^= 1;
        std::fs::write(&seg, &bad).unwrap();
        let err = Log::open(dir.path()).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("checksum") && m.contains("byte 8")), "{err:?}");
        assert_eq!(std::fs::read(&seg).unwrap(), bad, "damage is not a torn tail: the file is left for a person to look at");
        // Zeros after the whole records (blocks allotted, not written) are a torn tail.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 4096]);
        std::fs::write(&seg, &zeros).unwrap();
        assert_eq!(Log::open(dir.path()).unwrap().next_seq(), 3);
        assert_eq!(std::fs::read(&seg).unwrap(), whole);
    }

    #[test]
    fn full_segments_are_closed_and_deleted_once_all_their_records_are_analysed() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path()).unwrap();
        log.set_segment_bytes(64);
        let body = "[0123456789]";
        for i in 0..6 {
            log.append([(i, 1, body)].into_iter()).unwrap();
        }
        // Each record is 8 + 20 + 12 = 40 bytes: two fit under 64 with the header, then it is full.
        assert_eq!(log.segment_count(), 3);
        assert_eq!(segment_files(dir.path()).unwrap().len(), 3);
        log.forget_through(3);
        assert_eq!(log.segment_count(), 2, "the first segment (1, 2) is all analysed; the second holds 4");
        assert_eq!(bodies(&log, 3).iter().map(|b| b.0).collect::<Vec<_>>(), [4, 5, 6]);
        log.forget_through(6);
        assert_eq!(log.segment_count(), 0, "the last one is full too: a new one begins with the next record");
        assert!(segment_files(dir.path()).unwrap().is_empty());
        assert_eq!(log.append([(9, 1, body)].into_iter()).unwrap(), [7]);
        drop(log);
        let log = Log::open(dir.path()).unwrap();
        assert_eq!(bodies(&log, 0), [(7, body.to_string())]);
    }
}
