//! The integrity record: a small file beside the database (`STATE_DIR/integrity`) that says what the
//! database must at least hold, so that a rolled-back, replaced, emptied or missing database is refused
//! at start instead of being served as if nothing happened (fail closed).
//!
//! What it keeps:
//! - `store_id`: a random id the database carries in `meta` from its first open; another database in
//!   its place (or a new, empty one) does not carry it.
//! - `generation`: the committer bumps a counter in `meta` in every flush that carries writes, and
//!   writes the record only *after* that flush is on disk, so the database's generation is never below
//!   the record's unless the database lost flushed data (sled truncates its log at a damaged message
//!   and drops everything after it). The record follows the database by at most
//!   [`CHECKPOINT_INTERVAL`].
//! - `boot_count`, and after a clean stop (`clean = true`) the exact entry count of every tree and a
//!   digest of the security trees ([`super::trees::DIGESTED`]): a start after a clean stop finds the
//!   same state or refuses.
//!
//! The file has two fixed-size slots written alternately, each `[magic][len][crc32][JSON]`, and each
//! write is followed by `fdatasync`: a torn write damages one slot, and the other still holds the
//! previous record. A file with no valid slot is damaged, and the start is refused.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The record's file name inside the state directory.
pub const FILE_NAME: &str = "integrity";
/// The longest a flushed generation waits before the record names it.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const SLOT: usize = 4096;
const HEADER: usize = 12;
const MAGIC: &[u8; 4] = b"BSIR";
const FORMAT: u32 = 1;

/// What the database must hold, as of the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IntegrityRecord {
    pub format: u32,
    /// Write count of the file: the slot with the larger one is the current record.
    pub sequence: u64,
    pub store_id: String,
    pub generation: u64,
    pub boot_count: u64,
    /// Written by a clean stop: `trees` holds the exact state.
    pub clean: bool,
    #[serde(default)]
    pub trees: BTreeMap<String, TreeMark>,
    pub written_unix_ms: u64,
}

/// One tree's state at a clean stop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeMark {
    pub entries: u64,
    /// SHA-256 over every key and value, for the trees whose loss would weaken security.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl IntegrityRecord {
    pub fn new(store_id: String, generation: u64) -> IntegrityRecord {
        IntegrityRecord {
            format: FORMAT,
            sequence: 0,
            store_id,
            generation,
            boot_count: 0,
            clean: false,
            trees: BTreeMap::new(),
            written_unix_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the current record: `None` when there is no file, an error when no slot holds a valid one.
pub fn read(state_dir: &Path) -> Result<Option<IntegrityRecord>, IntegrityError> {
    let path = path(state_dir);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(file) => file
            .take((2 * SLOT) as u64)
            .read_to_end(&mut bytes)
            .map_err(|source| IntegrityError::Io {
                path: path.clone(),
                source,
            })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(IntegrityError::Io { path, source }),
    };
    let mut problems = Vec::new();
    let mut best: Option<IntegrityRecord> = None;
    for (index, slot) in bytes.chunks(SLOT).take(2).enumerate() {
        match decode_slot(slot) {
            Ok(Some(record)) => {
                if best.as_ref().is_none_or(|b| record.sequence > b.sequence) {
                    best = Some(record);
                }
            }
            Ok(None) => {}
            Err(problem) => problems.push(format!("slot {index}: {problem}")),
        }
    }
    match best {
        Some(record) if record.format > FORMAT => Err(IntegrityError::Damaged {
            path,
            detail: format!(
                "format {} is newer than this build understands ({FORMAT})",
                record.format
            ),
        }),
        Some(record) => Ok(Some(record)),
        None => Err(IntegrityError::Damaged {
            path,
            detail: if problems.is_empty() {
                "it holds no record".to_owned()
            } else {
                problems.join("; ")
            },
        }),
    }
}

/// `Ok(None)` for a slot never written (all zero).
fn decode_slot(slot: &[u8]) -> Result<Option<IntegrityRecord>, String> {
    if slot.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if slot.len() < HEADER || &slot[..4] != MAGIC {
        return Err("bad magic".to_owned());
    }
    let len = u32::from_le_bytes(slot[4..8].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(slot[8..12].try_into().unwrap_or_default());
    let Some(body) = slot.get(HEADER..HEADER + len) else {
        return Err(format!("length {len} exceeds the slot"));
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".to_owned());
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|err| format!("unreadable: {err}"))
}

fn encode_slot(record: &IntegrityRecord) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    if body.len() > SLOT - HEADER {
        return Err(std::io::Error::other(format!(
            "the integrity record needs {} bytes, more than a slot holds ({})",
            body.len(),
            SLOT - HEADER
        )));
    }
    let mut slot = vec![0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
    slot[8..12].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
    slot[HEADER..HEADER + body.len()].copy_from_slice(&body);
    Ok(slot)
}

/// The open record file; the committer owns it and is its only writer.
pub struct IntegrityFile {
    file: File,
    record: IntegrityRecord,
}

impl std::fmt::Debug for IntegrityFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrityFile")
            .field("record", &self.record)
            .finish()
    }
}

impl IntegrityFile {
    /// Opens (creating if needed, mode 0600) the record file and writes `record` into it at once.
    /// A new file's directory entry is made durable too.
    pub fn create(state_dir: &Path, record: IntegrityRecord) -> std::io::Result<IntegrityFile> {
        let path = path(state_dir);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        let mut opened = IntegrityFile { file, record };
        opened.write()?;
        if !existed {
            // Both slots exist from the start: a later torn write never leaves a short file.
            opened.write()?;
            File::open(state_dir)?.sync_all()?;
        }
        Ok(opened)
    }

    pub fn record(&self) -> &IntegrityRecord {
        &self.record
    }

    /// Changes the record and writes it to the next slot, durably.
    pub fn update(&mut self, change: impl FnOnce(&mut IntegrityRecord)) -> std::io::Result<()> {
        let before = self.record.clone();
        change(&mut self.record);
        let written = self.write();
        if written.is_err() {
            self.record = before;
        }
        written
    }

    fn write(&mut self) -> std::io::Result<()> {
        self.record.sequence += 1;
        self.record.written_unix_ms = super::unix_ms_now();
        let slot = encode_slot(&self.record)?;
        let offset = (self.record.sequence % 2) * SLOT as u64;
        let result = self
            .file
            .write_all_at(&slot, offset)
            .and_then(|()| self.file.sync_data());
        if result.is_err() {
            self.record.sequence -= 1;
        }
        result
    }
}

/// Writes `record` as the whole file, replacing what was there (`brainstemd recover`, tests).
pub fn replace(state_dir: &Path, record: &IntegrityRecord) -> std::io::Result<()> {
    let target = path(state_dir);
    let temp = state_dir.join(format!("{FILE_NAME}.tmp"));
    let slot = encode_slot(record)?;
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&slot)?;
        file.write_all(&vec![0u8; SLOT])?;
        file.sync_all()?;
    }
    std::fs::rename(&temp, &target)?;
    File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> IntegrityRecord {
        let mut record = IntegrityRecord::new("s1".to_owned(), 7);
        record.trees.insert(
            "tokens.revoked".to_owned(),
            TreeMark {
                entries: 3,
                digest: Some("ab".to_owned()),
            },
        );
        record
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut file = IntegrityFile::create(dir.path(), record()).unwrap();
        file.update(|r| r.generation = 8).unwrap();
        let current = read(dir.path()).unwrap().unwrap();
        assert_eq!(current.generation, 8);
        assert_eq!(current, *file.record());
        // Damage the slot just written: the previous record comes back.
        let bytes = std::fs::read(path(dir.path())).unwrap();
        let slot = (current.sequence % 2) as usize * SLOT;
        let mut damaged = bytes.clone();
        damaged[slot + HEADER + 5] ^= 0xFF;
        std::fs::write(path(dir.path()), &damaged).unwrap();
        let fallback = read(dir.path()).unwrap().unwrap();
        assert_eq!(fallback.generation, 7);
        assert_eq!(fallback.sequence, current.sequence - 1);
    }

    #[test]
    fn a_file_without_a_valid_slot_is_damaged_not_absent() {
        let dir = tempfile::tempdir().unwrap();
        IntegrityFile::create(dir.path(), record()).unwrap();
        let mut bytes = std::fs::read(path(dir.path())).unwrap();
        for slot in 0..2 {
            bytes[slot * SLOT + HEADER] ^= 0x55;
        }
        std::fs::write(path(dir.path()), &bytes).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        std::fs::write(path(dir.path()), b"").unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds no record"), "{err}");
    }

    #[test]
    fn replace_writes_a_file_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut wanted = record();
        wanted.sequence = 41;
        replace(dir.path(), &wanted).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().sequence, 41);
        // A later update goes on from there.
        let mut file = IntegrityFile::create(dir.path(), wanted).unwrap();
        file.update(|r| r.clean = true).unwrap();
        let current = read(dir.path()).unwrap().unwrap();
        assert!(current.clean);
        assert_eq!(current.sequence, 43, "create wrote 42, the update 43");
    }
}
