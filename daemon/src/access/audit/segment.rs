//! The audit log on disk: an append-only directory of segment files, each a hash chain of binary
//! frames (docs/AUDIT.md describes the format byte by byte; `brainstemctl audit verify` reads it
//! independently of this code).
//!
//! ```text
//! <state_dir>/audit/00000000000000000001.seg   first sequence number in the name
//! segment = header frame*
//! header  = magic first_seq:u64le prev_hash:[32]          prev_hash: the last frame's hash of the
//!                                                         previous segment (zeros for the first)
//! magic   = "BSAUDIT2" (payloads in the compact form) | "BSAUDIT1" (the first form, still read)
//! frame   = len:u32le seq:u64le hash:[32] payload[len]
//! hash    = SHA-256(prev_hash ‖ seq:u64le ‖ payload)      prev_hash: the previous frame's hash
//! ```
//!
//! Only the writer appends ([`SegmentWriter`], one per log, used from blocking threads); readers
//! take a snapshot of the segment list ([`Index`]) and read each file up to the length the writer
//! committed, so they never see half a frame. Counts and sizes are kept in the index: nothing here
//! counts by scanning, except the one walk over the frames when the log is opened.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{AuditKind, AuditRecord, Entry};

/// The header of the segments this build writes: payloads in the compact form ([`encode`]).
pub const MAGIC: &[u8; 8] = b"BSAUDIT2";
/// The header of segments of earlier builds: payloads in the first form ([`encode_v1`]); read,
/// queried and verified as before, never appended to.
pub const MAGIC_V1: &[u8; 8] = b"BSAUDIT1";
/// The payload form of the segments this build writes.
pub const VERSION: u8 = 2;
pub const HEADER_LEN: u64 = 48;
pub const FRAME_HEAD: usize = 44;
/// A frame larger than this is damage, not a record.
pub const MAX_PAYLOAD: usize = 1 << 24;
pub type Hash = [u8; 32];
/// Every this many records a segment's index notes where the record starts, so a query reads a
/// window of at most this many records instead of a whole segment.
pub const MARK_EVERY: u64 = 256;

/// The chain step: the hash of a frame given the hash before it.
pub fn chain(prev: &Hash, seq: u64, payload: &[u8]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(&seq.to_le_bytes());
    ctx.update(payload);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

// ---- the record payload ----------------------------------------------------------------------

/// The payload form a segment header announces, if it is a segment header.
pub fn version_of(header: &[u8]) -> Option<u8> {
    match header.get(..8)? {
        m if m == MAGIC => Some(2),
        m if m == MAGIC_V1 => Some(1),
        _ => None,
    }
}

fn kind_byte(kind: AuditKind) -> u8 {
    match kind {
        AuditKind::Policy => 0,
        AuditKind::Guardrail => 1,
        AuditKind::Access => 2,
        AuditKind::Token => 3,
        AuditKind::Admin => 4,
        AuditKind::Secret => 5,
        AuditKind::Registry => 6,
    }
}

fn kind_of(byte: u8) -> Result<AuditKind, String> {
    Ok(match byte {
        0 => AuditKind::Policy,
        1 => AuditKind::Guardrail,
        2 => AuditKind::Access,
        3 => AuditKind::Token,
        4 => AuditKind::Admin,
        5 => AuditKind::Secret,
        6 => AuditKind::Registry,
        other => return Err(format!("unknown kind {other}")),
    })
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Appends `n` as LEB128: seven bits a byte, low first, the high bit set on all but the last.
fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `s` as bytes when it is exactly `2 * N` lowercase hex digits (decision ids, generated
/// correlation ids), which the compact form stores at half the size. Every record packs two ids,
/// so eight digits are read at a time ([`pack_8_digits`]); a shorter tail a pair at a time.
fn packed_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut quads = out.chunks_exact_mut(4);
    let mut octets = digits.chunks_exact(8);
    for (quad, octet) in (&mut quads).zip(&mut octets) {
        quad.copy_from_slice(&pack_8_digits(octet.try_into().ok()?)?);
    }
    pack_pairs(octets.remainder(), quads.into_remainder())?;
    Some(out)
}

/// A pair of digits a byte, by table; `None` if any is not a lowercase hex digit.
fn pack_pairs(digits: &[u8], out: &mut [u8]) -> Option<()> {
    // One table lookup a digit; a non-digit (0xff) is caught once at the end, not per digit.
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0xf);
    }
    (bad & 0xf0 == 0).then_some(())
}

/// Eight lowercase hex digits as four bytes, all eight checked and converted at once in a `u64`
/// (SWAR); `None` if any is not a lowercase hex digit.
fn pack_8_digits(digits: [u8; 8]) -> Option<[u8; 4]> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = u64::from_le_bytes(digits);
    // For bytes below 0x80, the high bit of each byte of `(x | HIGH) - n * ONES` is set exactly
    // when that byte is at least `n` (no byte borrows from the next).
    let at_least = |n: u8| ((x | HIGH) - u64::from(n) * ONES) & HIGH;
    let decimal = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if x & HIGH != 0 || (decimal | letter) != HIGH {
        return None;
    }
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for a letter.
    let nibbles = (x & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Each 16-bit lane holds (first digit, second digit): the byte is first << 4 | second.
    const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
    let bytes = ((nibbles & LOW_BYTES) << 4) | ((nibbles >> 8) & LOW_BYTES);
    let bytes = (bytes | (bytes >> 8)) & 0x0000_ffff_0000_ffff;
    let bytes = (bytes | (bytes >> 16)) & 0xffff_ffff;
    Some((bytes as u32).to_le_bytes())
}

/// The value of each lowercase hex digit; 0xff for every other byte.
static NIBBLE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut d = 0;
    while d < 10 {
        table[b'0' as usize + d] = d as u8;
        d += 1;
    }
    let mut d = 0;
    while d < 6 {
        table[b'a' as usize + d] = 10 + d as u8;
        d += 1;
    }
    table
};

fn unpack_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(2 * bytes.len());
    for b in bytes {
        text.push(DIGITS[usize::from(b >> 4)]);
        text.push(DIGITS[usize::from(b & 0xf)]);
    }
    // Hex digits are ASCII.
    String::from_utf8(text).unwrap_or_default()
}

/// Flags of the compact form.
const ALLOWED: u8 = 1;
/// The principal is the caller and is not stored again.
const PRINCIPAL_IS_CALLER: u8 = 2;
/// The decision id is 20 lowercase hex digits, stored as 10 bytes.
const DECISION_ID_PACKED: u8 = 4;
/// The correlation id is 32 lowercase hex digits, stored as 16 bytes.
const CORRELATION_ID_PACKED: u8 = 8;
const KNOWN_FLAGS: u8 = ALLOWED | PRINCIPAL_IS_CALLER | DECISION_ID_PACKED | CORRELATION_ID_PACKED;

/// Appends the compact form of `r` (everything but `seq`, which the frame carries): about 60 bytes
/// fewer than the first form for a typical decision, so fewer bytes to hash, write and keep.
///
/// ```text
/// time_unix_ms:u64le kind:u8 flags:u8 count:varint
/// decision_id:(hex16 [10] | text) caller:text [principal:text unless PRINCIPAL_IS_CALLER]
/// action:text resource:text correlation_id:(hex32 [16] | text) n:varint reason:text*
/// text = len:varint UTF-8          varint = LEB128
/// ```
pub fn encode(r: &Entry<'_>, out: &mut Vec<u8>) {
    let decision_id = packed_hex::<10>(r.decision_id);
    let correlation_id = packed_hex::<16>(r.correlation_id);
    let mut flags = 0;
    if r.allowed {
        flags |= ALLOWED;
    }
    if r.principal == r.caller {
        flags |= PRINCIPAL_IS_CALLER;
    }
    if decision_id.is_some() {
        flags |= DECISION_ID_PACKED;
    }
    if correlation_id.is_some() {
        flags |= CORRELATION_ID_PACKED;
    }
    out.extend_from_slice(&r.time_unix_ms.to_le_bytes());
    out.push(kind_byte(r.kind));
    out.push(flags);
    put_varint(out, u64::from(r.count));
    match &decision_id {
        Some(packed) => out.extend_from_slice(packed),
        None => put_text(out, r.decision_id),
    }
    put_text(out, r.caller);
    if r.principal != r.caller {
        put_text(out, r.principal);
    }
    put_text(out, r.action);
    put_text(out, r.resource);
    match &correlation_id {
        Some(packed) => out.extend_from_slice(packed),
        None => put_text(out, r.correlation_id),
    }
    put_varint(out, r.reasons.len() as u64);
    for reason in r.reasons {
        put_text(out, reason);
    }
}

/// Records framed for the log but not yet numbered: what the audit queue holds and the writer
/// appends. Each is a whole frame whose `seq` and `hash` are still zero, encoded where the record
/// was made (on the caller's thread, into one shared buffer: no allocation per record), so the
/// writer numbers and chains the frames in place and writes them out without copying.
#[derive(Debug, Default)]
pub struct RecordBuf {
    buf: Vec<u8>,
    /// Where each record's frame ends.
    ends: Vec<usize>,
}

/// A buffer that grew past this in a burst is given back once written.
const RECORD_BUF_KEEP: usize = 4 << 20;

impl RecordBuf {
    pub fn with_capacity(records: usize, bytes: usize) -> RecordBuf {
        RecordBuf {
            buf: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
        }
    }

    /// Appends `r` as an unnumbered frame.
    pub fn push(&mut self, r: &Entry<'_>) {
        // Whatever an interrupted push left after the last whole frame goes first.
        let start = self.ends.last().copied().unwrap_or(0);
        self.buf.truncate(start);
        self.buf.extend_from_slice(&[0u8; FRAME_HEAD]);
        encode(r, &mut self.buf);
        let len = (self.buf.len() - start - FRAME_HEAD) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.ends.push(self.buf.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Empties the buffer, keeping its allocation unless a burst made it large.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        self.buf.shrink_to(RECORD_BUF_KEEP);
        self.ends.shrink_to(RECORD_BUF_KEEP / 64);
    }

    fn start(&self, i: usize) -> usize {
        if i == 0 { 0 } else { self.ends[i - 1] }
    }

    /// Record `i`'s payload.
    pub fn payload(&self, i: usize) -> &[u8] {
        &self.buf[self.start(i) + FRAME_HEAD..self.ends[i]]
    }

    /// Record `i`'s kind and the events it stands for (its count, at least 1).
    pub fn kind_and_count(&self, i: usize) -> (AuditKind, u64) {
        let payload = self.payload(i);
        let kind = payload
            .get(8)
            .map_or(Ok(AuditKind::Policy), |b| kind_of(*b));
        let count = payload
            .get(10..)
            .map_or(Ok(1), |rest| Cursor(rest).varint());
        (kind.unwrap_or(AuditKind::Policy), count.unwrap_or(1).max(1))
    }
}

/// Appends the first form of `r`, which segments headed [`MAGIC_V1`] hold (tests write such
/// segments with it):
/// `time_unix_ms:u64 kind:u8 allowed:u8 count:u32`, the six strings and each reason as
/// `len:u32 + UTF-8`, reasons preceded by `n:u32`.
pub fn encode_v1(r: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.time_unix_ms.to_le_bytes());
    out.push(kind_byte(r.kind));
    out.push(u8::from(r.allowed));
    out.extend_from_slice(&r.count.to_le_bytes());
    for s in [
        &r.decision_id,
        &r.caller,
        &r.principal,
        &r.action,
        &r.resource,
        &r.correlation_id,
    ] {
        put_str(out, s);
    }
    out.extend_from_slice(&(r.reasons.len() as u32).to_le_bytes());
    for reason in &r.reasons {
        put_str(out, reason);
    }
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("record ends early".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        Self::utf8(self.take(n)?)
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number is too long".to_owned())
    }
    fn text(&mut self) -> Result<String, String> {
        let n = usize::try_from(self.varint()?).map_err(|_| "record ends early".to_owned())?;
        Self::utf8(self.take(n)?)
    }
    fn utf8(bytes: &[u8]) -> Result<String, String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| "a text field is not UTF-8".to_owned())
    }
}

/// The time a payload carries (its first field), without decoding the rest.
pub fn time_of(payload: &[u8]) -> u64 {
    Cursor(payload).u64().unwrap_or(0)
}

/// The record in `payload`, written in payload form `version` (the segment's, [`version_of`]).
pub fn decode(version: u8, seq: u64, payload: &[u8]) -> Result<AuditRecord, String> {
    match version {
        1 => decode_v1(seq, payload),
        2 => decode_v2(seq, payload),
        other => Err(format!("unknown payload form {other}")),
    }
}

fn decode_v2(seq: u64, payload: &[u8]) -> Result<AuditRecord, String> {
    let mut c = Cursor(payload);
    let time_unix_ms = c.u64()?;
    let kind = kind_of(c.take(1)?[0])?;
    let flags = c.take(1)?[0];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let count = u32::try_from(c.varint()?).map_err(|_| "count out of range".to_owned())?;
    let decision_id = if flags & DECISION_ID_PACKED != 0 {
        unpack_hex(c.take(10)?)
    } else {
        c.text()?
    };
    let caller = c.text()?;
    let principal = if flags & PRINCIPAL_IS_CALLER != 0 {
        caller.clone()
    } else {
        c.text()?
    };
    let action = c.text()?;
    let resource = c.text()?;
    let correlation_id = if flags & CORRELATION_ID_PACKED != 0 {
        unpack_hex(c.take(16)?)
    } else {
        c.text()?
    };
    let n = c.varint()?;
    let mut reasons = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        reasons.push(c.text()?);
    }
    if !c.0.is_empty() {
        return Err("trailing bytes after the record".to_owned());
    }
    Ok(AuditRecord {
        seq,
        time_unix_ms,
        decision_id,
        kind,
        caller,
        principal,
        action,
        resource,
        allowed: flags & ALLOWED != 0,
        reasons,
        correlation_id,
        count,
    })
}

fn decode_v1(seq: u64, payload: &[u8]) -> Result<AuditRecord, String> {
    let mut c = Cursor(payload);
    let time_unix_ms = c.u64()?;
    let kind = kind_of(c.take(1)?[0])?;
    let allowed = c.take(1)?[0] != 0;
    let count = c.u32()?;
    let decision_id = c.str()?;
    let caller = c.str()?;
    let principal = c.str()?;
    let action = c.str()?;
    let resource = c.str()?;
    let correlation_id = c.str()?;
    let n = c.u32()? as usize;
    let mut reasons = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        reasons.push(c.str()?);
    }
    if !c.0.is_empty() {
        return Err("trailing bytes after the record".to_owned());
    }
    Ok(AuditRecord {
        seq,
        time_unix_ms,
        decision_id,
        kind,
        caller,
        principal,
        action,
        resource,
        allowed,
        reasons,
        correlation_id,
        count,
    })
}

// ---- frames ----------------------------------------------------------------------------------

pub struct Frame<'a> {
    pub seq: u64,
    pub hash: Hash,
    pub payload: &'a [u8],
}

/// Walks the frames of a segment's bytes (after the header). Stops at the first frame that does
/// not fit; [`Frames::pos`] is then the offset of the last whole frame's end.
pub struct Frames<'a> {
    buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Frames<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Frames { buf, pos: 0 }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        let rest = &self.buf[self.pos..];
        if rest.len() < FRAME_HEAD {
            return None;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_PAYLOAD || rest.len() < FRAME_HEAD + len {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&rest[4..12]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&rest[12..44]);
        self.pos += FRAME_HEAD + len;
        Some(Frame {
            seq: u64::from_le_bytes(seq),
            hash,
            payload: &rest[FRAME_HEAD..FRAME_HEAD + len],
        })
    }
}

// ---- the index -------------------------------------------------------------------------------

/// One segment as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_seq: u64,
    /// The payload form of its records ([`version_of`]; 1 for segments of earlier builds).
    pub version: u8,
    /// One past the last record's sequence number.
    pub next_seq: u64,
    /// Bytes committed (header included); readers read no further.
    pub len: u64,
    pub first_ms: u64,
    pub last_ms: u64,
    /// (seq, byte offset) of every [`MARK_EVERY`]th record, the first included.
    pub marks: Vec<(u64, u64)>,
}

/// A run of at most [`MARK_EVERY`] records of a segment: records `first_seq..next_seq` in bytes
/// `start..end` of the file.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub first_seq: u64,
    pub next_seq: u64,
    pub start: u64,
    pub end: u64,
}

impl SegmentInfo {
    pub fn records(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    /// The segment's committed records as windows, oldest first.
    pub fn windows(&self) -> Vec<Window> {
        let mut out = Vec::with_capacity(self.marks.len());
        for (i, &(seq, start)) in self.marks.iter().enumerate() {
            let (next_seq, end) = self
                .marks
                .get(i + 1)
                .copied()
                .unwrap_or((self.next_seq, self.len));
            out.push(Window {
                first_seq: seq,
                next_seq,
                start,
                end,
            });
        }
        out
    }
}

/// What readers share with the writer: the segment list and the totals, kept up to date by the
/// writer so nothing needs to count.
#[derive(Debug)]
pub struct Index {
    pub dir: PathBuf,
    segments: RwLock<Vec<SegmentInfo>>,
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Index {
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The segments, oldest first (the last one is being appended to).
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The frames of one window of a segment. A segment trimmed meanwhile reads as empty.
    pub fn read(&self, info: &SegmentInfo, window: &Window) -> io::Result<Vec<u8>> {
        let mut file = match File::open(self.dir.join(file_name(info.first_seq))) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(window.start))?;
        let mut buf = Vec::with_capacity(window.end.saturating_sub(window.start) as usize);
        file.take(window.end.saturating_sub(window.start))
            .read_to_end(&mut buf)?;
        Ok(buf)
    }

    fn update(&self, f: impl FnOnce(&mut Vec<SegmentInfo>)) {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        f(&mut segments);
        self.records.store(
            segments.iter().map(SegmentInfo::records).sum(),
            Ordering::Release,
        );
        self.bytes
            .store(segments.iter().map(|s| s.len).sum(), Ordering::Release);
    }
}

/// What opening found worth telling the operator.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Bytes of a torn last frame cut off the active segment (a crash mid-write).
    pub torn_bytes: u64,
}

// ---- the writer ------------------------------------------------------------------------------

/// When the active segment is closed and a new one begun.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: u64,
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

impl Limits {
    /// Retention works on whole segments; 1/16 of each limit per segment keeps what remains within
    /// a sixteenth of the limit.
    fn segment_records(&self) -> u64 {
        (self.max_records / 16).max(64)
    }
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(4096, 64 << 20)
    }
}

/// What an append needs to know of the active segment.
#[derive(Debug, Clone, Copy)]
struct Active {
    first_seq: u64,
    records: u64,
    /// Bytes committed, header included.
    len: u64,
}

/// The one appender. Not shared between threads at once (the worker holds it in a mutex).
#[derive(Debug)]
pub struct SegmentWriter {
    index: Arc<Index>,
    limits: Limits,
    file: File,
    /// Bytes of the active file known good.
    committed: u64,
    /// A write began and did not finish (an error or a panic): cut back to `committed` first.
    dirty: bool,
    prev: Hash,
    next_seq: u64,
    /// Written since the last `fdatasync`.
    unsynced: bool,
    last_sync: std::time::Instant,
    /// `fdatasync`s done since the writer was opened.
    syncs: u64,
    /// Test hook: while set, every write fails as a full disk would.
    pub fail: Arc<AtomicBool>,
}

/// Records not waited for are synced at least this often (fail-closed ones at once).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl SegmentWriter {
    /// Opens `dir` (created if needed): walks every segment once to rebuild the index, and cuts a
    /// torn tail off the last one.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<(SegmentWriter, Recovered)> {
        crate::crypto::files::create_private_dir(dir)?;
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = Vec::new();
        let mut recovered = Recovered::default();
        let mut prev = [0u8; 32];
        let mut next_seq = 1;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = dir.join(file_name(first));
            let bytes = fs::read(&path)?;
            let version = version_of(&bytes).filter(|_| bytes.len() >= HEADER_LEN as usize);
            let Some(version) = version else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is not an audit segment (bad header); move it aside",
                        path.display()
                    ),
                ));
            };
            let mut info = SegmentInfo {
                first_seq: first,
                version,
                next_seq: first,
                len: HEADER_LEN,
                first_ms: 0,
                last_ms: 0,
                marks: Vec::new(),
            };
            let mut frames = Frames::new(&bytes[HEADER_LEN as usize..]);
            loop {
                let at = HEADER_LEN + frames.pos as u64;
                let Some(frame) = frames.next() else {
                    break;
                };
                if (frame.seq - first) % MARK_EVERY == 0 {
                    info.marks.push((frame.seq, at));
                }
                let ms = time_of(frame.payload);
                if info.records() == 0 {
                    info.first_ms = ms;
                }
                info.last_ms = ms;
                info.next_seq = frame.seq + 1;
                prev = frame.hash;
            }
            if info.records() == 0 {
                prev.copy_from_slice(&bytes[16..48]);
            }
            info.len = HEADER_LEN + frames.pos as u64;
            let torn = bytes.len() as u64 - info.len;
            if torn > 0 && i + 1 == count {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(info.len)?;
                file.sync_all()?;
                recovered.torn_bytes = torn;
            }
            next_seq = info.next_seq;
            segments.push(info);
        }
        let index = Arc::new(Index {
            dir: dir.to_owned(),
            segments: RwLock::new(Vec::new()),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        });
        let file = match segments.last() {
            Some(last) if last.version == VERSION => OpenOptions::new()
                .append(true)
                .open(dir.join(file_name(last.first_seq)))?,
            // A log written by an earlier build goes on in a new segment of this build's form,
            // chained to the old one (an empty old segment of the same name is replaced).
            _ => {
                let (file, info) = create_segment(dir, next_seq, &prev)?;
                if segments
                    .last()
                    .is_some_and(|last| last.first_seq == next_seq)
                {
                    segments.pop();
                }
                segments.push(info);
                file
            }
        };
        let committed = segments.last().map_or(HEADER_LEN, |s| s.len);
        index.update(|s| *s = segments);
        Ok((
            SegmentWriter {
                index,
                limits,
                file,
                committed,
                dirty: false,
                prev,
                next_seq,
                unsynced: false,
                last_sync: std::time::Instant::now(),
                syncs: 0,
                fail: Arc::new(AtomicBool::new(false)),
            },
            recovered,
        ))
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends `records`, already framed ([`RecordBuf`]), numbering and chaining them in place in
    /// order from [`SegmentWriter::next_seq`]: one `write` per segment the batch touches (a full
    /// segment is synced, sealed and the next begun on the way), then one `fdatasync` when `sync`
    /// (a fail-closed record waits) or when the last one is [`SYNC_EVERY`] old. Returns how many
    /// were written, and the error that stopped the rest: a failed part is cut back off the file,
    /// and the numbering and chain continue from the last written one. A failed sync is returned
    /// as the error with every record counted as written (they are in the file, perhaps not on
    /// the platter): waiters must then be told no.
    pub fn append(&mut self, records: &mut RecordBuf, sync: bool) -> (usize, Option<io::Error>) {
        let mut done = 0;
        while done < records.len() {
            match self.append_part(records, done) {
                Ok(n) => done += n,
                Err(err) => return (done, Some(err)),
            }
        }
        if sync || self.last_sync.elapsed() >= SYNC_EVERY {
            if let Err(err) = self.sync() {
                return (done, Some(err));
            }
        }
        (done, None)
    }

    /// `fdatasync`s done since the writer was opened.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// `fdatasync` if anything was written since the last one.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
            self.syncs += 1;
        }
        self.last_sync = std::time::Instant::now();
        Ok(())
    }

    /// Appends as many of `records` from `from` on as fit in the active segment (at least one).
    fn append_part(&mut self, records: &mut RecordBuf, from: usize) -> io::Result<usize> {
        if self.dirty {
            self.file.set_len(self.committed)?;
            self.dirty = false;
        }
        let mut active = self.active();
        if active.records >= self.limits.segment_records()
            || active.len >= self.limits.segment_bytes()
        {
            self.roll()?;
            active = self.active();
        }
        let room_records = self.limits.segment_records() - active.records;
        let room_bytes = self.limits.segment_bytes() - active.len;
        let begin = records.start(from);
        let (mut seq, mut prev) = (self.next_seq, self.prev);
        let (mut first_ms, mut last_ms, mut n) = (0, 0, 0);
        let mut marks = Vec::new();
        for i in from..records.len() {
            let (start, end) = (records.start(i), records.ends[i]);
            if n > 0 && (n as u64 >= room_records || (start - begin) as u64 >= room_bytes) {
                break;
            }
            if (seq - active.first_seq) % MARK_EVERY == 0 {
                marks.push((seq, self.committed + (start - begin) as u64));
            }
            let frame = &mut records.buf[start..end];
            let (head, payload) = frame.split_at_mut(FRAME_HEAD);
            let hash = chain(&prev, seq, payload);
            head[4..12].copy_from_slice(&seq.to_le_bytes());
            head[12..FRAME_HEAD].copy_from_slice(&hash);
            let ms = time_of(payload);
            if n == 0 {
                first_ms = ms;
            }
            last_ms = ms;
            prev = hash;
            seq += 1;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let bytes = &records.buf[begin..records.ends[from + n - 1]];
        self.dirty = true;
        if self.fail.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        let written = self.file.write_all(bytes);
        if let Err(err) = written {
            // Best effort: the next append tries again while `dirty` stays set.
            if self.file.set_len(self.committed).is_ok() {
                self.dirty = false;
            }
            return Err(err);
        }
        self.dirty = false;
        self.unsynced = true;
        self.committed += bytes.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        let committed = self.committed;
        self.index.update(|segments| {
            if let Some(last) = segments.last_mut() {
                if last.records() == 0 {
                    last.first_ms = first_ms;
                }
                last.last_ms = last_ms;
                last.next_seq = seq;
                last.len = committed;
                last.marks.extend(marks);
            }
        });
        Ok(n)
    }

    /// Where the active segment stands. Read on every append, so its marks (a few KiB in a full
    /// segment) are not copied.
    fn active(&self) -> Active {
        let segments = self
            .index
            .segments
            .read()
            .unwrap_or_else(|p| p.into_inner());
        match segments.last() {
            Some(last) => Active {
                first_seq: last.first_seq,
                records: last.records(),
                len: last.len,
            },
            None => Active {
                first_seq: self.next_seq,
                records: 0,
                len: HEADER_LEN,
            },
        }
    }

    /// Seals the active segment and begins the next, chained to it.
    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let (file, info) = create_segment(&self.index.dir, self.next_seq, &self.prev)?;
        self.file = file;
        self.committed = info.len;
        self.index.update(|segments| segments.push(info));
        Ok(())
    }

    /// Removes whole segments, oldest first, while the log is beyond a limit; never the active one.
    /// Returns how many records went, by why.
    pub fn trim(&mut self, now_ms: u64) -> Vec<(&'static str, u64)> {
        let mut trimmed: Vec<(&'static str, u64)> = Vec::new();
        loop {
            let segments = self.index.segments();
            let (Some(oldest), true) = (segments.first(), segments.len() > 1) else {
                break;
            };
            let why = if self.index.records() > self.limits.max_records {
                "count"
            } else if self.index.bytes() > self.limits.max_bytes {
                "bytes"
            } else if oldest.last_ms < now_ms.saturating_sub(self.limits.max_age_ms) {
                "age"
            } else {
                break;
            };
            if let Err(err) = fs::remove_file(self.index.dir.join(file_name(oldest.first_seq))) {
                if err.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(error = %err, segment = oldest.first_seq, "audit retention could not remove a segment");
                    break;
                }
            }
            let records = oldest.records();
            self.index.update(|s| {
                s.remove(0);
            });
            match trimmed.iter_mut().find(|(w, _)| *w == why) {
                Some((_, n)) => *n += records,
                None => trimmed.push((why, records)),
            }
        }
        trimmed
    }
}

fn create_segment(dir: &Path, first_seq: u64, prev: &Hash) -> io::Result<(File, SegmentInfo)> {
    let path = dir.join(file_name(first_seq));
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    // A leftover file of that name (a roll cut short) starts over.
    file.set_len(0)?;
    let mut header = Vec::with_capacity(HEADER_LEN as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&first_seq.to_le_bytes());
    header.extend_from_slice(prev);
    file.write_all(&header)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((
        file,
        SegmentInfo {
            first_seq,
            version: VERSION,
            next_seq: first_seq,
            len: HEADER_LEN,
            first_ms: 0,
            last_ms: 0,
            marks: Vec::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 records a segment.
    const LIMITS: Limits = Limits {
        max_records: 1000,
        max_bytes: 1 << 20,
        max_age_ms: u64::MAX / 2,
    };

    /// Record `i` of a test batch, timed `1_000 + i`.
    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time_unix_ms: 1_000 + i,
            decision_id: format!("{i:020x}"),
            kind: AuditKind::Policy,
            caller: "spiffe://h/a".to_owned(),
            principal: "spiffe://h/a".to_owned(),
            action: "web.read".to_owned(),
            resource: String::new(),
            allowed: i % 2 == 0,
            reasons: vec!["r".to_owned()],
            correlation_id: String::new(),
            count: 1,
        }
    }

    #[test]
    fn hex_ids_pack_only_when_lowercase_hex() {
        assert_eq!(
            packed_hex::<2>("0a9f"),
            Some([0x0a, 0x9f]),
            "lowercase digits pack"
        );
        assert_eq!(
            unpack_hex(&packed_hex::<4>("deadbeef").unwrap()),
            "deadbeef"
        );
        for bad in ["0A9f", "0g9f", "0a9", "0a9f0", "0a 9", "0a\u{e9}"] {
            assert_eq!(packed_hex::<2>(bad), None, "{bad:?} must stay text");
        }
    }

    /// The eight-at-a-time path agrees with the table on every byte value at every place, and
    /// the ids the log packs (20 and 32 digits) round-trip.
    #[test]
    fn eight_digits_at_a_time_pack_as_the_table_does() {
        let by_table = |digits: &[u8; 8]| {
            let mut out = [0u8; 4];
            pack_pairs(digits, &mut out).map(|()| out)
        };
        let base = *b"0123abcd";
        for place in 0..8 {
            for byte in 0..=255u8 {
                let mut digits = base;
                digits[place] = byte;
                assert_eq!(
                    pack_8_digits(digits),
                    by_table(&digits),
                    "{digits:?} (byte {byte:#04x} at {place})"
                );
            }
        }
        for digits in [b"00000000", b"ffffffff", b"9a9a9a9a", b"f0e1d2c3"] {
            assert_eq!(pack_8_digits(*digits), by_table(digits));
            assert!(pack_8_digits(*digits).is_some());
        }
        let id = "0123456789abcdeffedc";
        assert_eq!(unpack_hex(&packed_hex::<10>(id).unwrap()), id);
        let correlation = "00112233445566778899aabbccddeeff";
        assert_eq!(
            unpack_hex(&packed_hex::<16>(correlation).unwrap()),
            correlation
        );
        for place in 0..correlation.len() {
            let mut bad = correlation.as_bytes().to_vec();
            bad[place] = b'G';
            let bad = String::from_utf8(bad).unwrap();
            assert_eq!(packed_hex::<16>(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_record_buffer_frames_records_and_reads_their_kind_and_count() {
        let mut framed = RecordBuf::default();
        let mut first = AuditRecord {
            time_unix_ms: 42,
            kind: AuditKind::Secret,
            count: 0,
            ..record(0)
        };
        framed.push(&first.entry());
        // A push cut short (a panic mid-encode) leaves bytes after the last whole frame: the next
        // push starts where that frame ended.
        framed.buf.extend_from_slice(b"torn");
        first.kind = AuditKind::Access;
        first.count = 300;
        framed.push(&first.entry());
        assert_eq!(framed.len(), 2);
        assert_eq!(framed.kind_and_count(0), (AuditKind::Secret, 1));
        assert_eq!(framed.kind_and_count(1), (AuditKind::Access, 300));
        let frames: Vec<_> = Frames::new(&framed.buf).collect();
        assert_eq!(frames.len(), 2, "the torn bytes were dropped");
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!((frame.seq, frame.hash), (0, [0u8; 32]), "not yet numbered");
            assert_eq!(frame.payload, framed.payload(i));
            assert_eq!(time_of(frame.payload), 42);
        }
        framed.clear();
        assert!(framed.is_empty());
        assert!(framed.buf.is_empty());
    }

    #[test]
    fn one_batch_across_several_segments_keeps_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = SegmentWriter::open(dir.path(), LIMITS).unwrap();
        let mut framed = RecordBuf::default();
        for i in 0..200 {
            framed.push(&record(i).entry());
        }
        assert_eq!(writer.append(&mut framed, true).0, 200);
        let segments = writer.index().segments();
        assert_eq!(segments.len(), 4);
        let mut prev = [0u8; 32];
        let mut next = 1;
        for info in &segments {
            let bytes = fs::read(dir.path().join(file_name(info.first_seq))).unwrap();
            assert_eq!(
                &bytes[16..48],
                &prev,
                "each segment names the last hash before it"
            );
            for frame in Frames::new(&bytes[HEADER_LEN as usize..]) {
                assert_eq!(frame.seq, next);
                assert_eq!(frame.hash, chain(&prev, frame.seq, frame.payload));
                assert_eq!(time_of(frame.payload), 999 + next);
                prev = frame.hash;
                next += 1;
            }
            assert_eq!(
                (info.first_ms, info.last_ms),
                (1_000 + info.first_seq - 1, 999 + info.next_seq - 1)
            );
        }
        assert_eq!(next, 201);
        drop(writer);
        let (reopened, recovered) = SegmentWriter::open(dir.path(), LIMITS).unwrap();
        assert_eq!((reopened.next_seq(), recovered.torn_bytes), (201, 0));
        assert_eq!(reopened.index().segments(), segments);
    }

    #[test]
    fn framed_records_append_like_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = SegmentWriter::open(dir.path(), LIMITS).unwrap();
        for batch in [0..3, 3..5] {
            let mut framed = RecordBuf::default();
            for i in batch.clone() {
                framed.push(&record(i).entry());
            }
            let (written, error) = writer.append(&mut framed, true);
            assert_eq!(written, batch.count());
            assert!(error.is_none(), "{error:?}");
        }
        assert_eq!(writer.next_seq(), 6, "append numbers the records it wrote");
        let info = writer.index().segments().pop().unwrap();
        let bytes = fs::read(dir.path().join(file_name(info.first_seq))).unwrap();
        let mut prev = [0u8; 32];
        let mut seen = Vec::new();
        for frame in Frames::new(&bytes[HEADER_LEN as usize..]) {
            assert_eq!(frame.hash, chain(&prev, frame.seq, frame.payload));
            prev = frame.hash;
            let mut expected = record(frame.seq - 1);
            expected.seq = frame.seq;
            assert_eq!(decode(VERSION, frame.seq, frame.payload).unwrap(), expected);
            seen.push(frame.seq);
        }
        assert_eq!(seen, [1, 2, 3, 4, 5]);
    }
}
