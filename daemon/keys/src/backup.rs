//! The backup file format, shared by `brainstemd` (which writes and restores it) and `brainstemctl`
//! (which verifies it without the key). docs/BACKUP.md describes it for operators.
//!
//! ```text
//! file    = "BSBACKUP" format:u32le header_len:u32le header[header_len] header_sha256:[32] chunk*
//! header  = JSON (Header): creation time, schema versions, entries per tree, master key id, file id,
//!           chunk size and count, body length and SHA-256
//! chunk   = sealed_len:u32le sealed[sealed_len]                 sealed = nonce ‖ ciphertext ‖ tag
//! body    = every chunk, length fields included (what body_sha256 covers)
//! AAD     = "brainstem backup v1" ‖ file_id:[16] ‖ index:u64le ‖ last:u8 ‖ header_sha256:[32]
//! ```
//!
//! The plaintext, split into chunks of `chunk_size` bytes (the last may be shorter, never empty
//! unless the whole plaintext is), is a sequence of items ([`Item`]): tree entries and audit segment
//! files. Each chunk is sealed with AES-256-GCM under the master key with associated data that binds
//! the file, the chunk's position, whether it is the last, and the header: a truncated file (the last
//! chunk missing), reordered or replayed chunks, a chunk from another backup, or an edited header do
//! not open. Without the key, [`verify`] still checks the structure, the header's and the body's
//! SHA-256 and the chunk framing, so accidental damage is found before a restore is attempted.
//!
//! The sealing itself is the caller's (the daemon's master key, `seal`/`unseal` with a fresh random
//! nonce): this module never sees the key.

use std::collections::BTreeMap;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"BSBACKUP";
/// The format this build writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 1 << 20;
/// Bytes sealing adds to a chunk (nonce and tag), as the daemon's master key seals.
pub const SEAL_OVERHEAD: usize = 12 + 16;
/// A header larger than this is damage.
const MAX_HEADER: usize = 1 << 20;
const AAD_LABEL: &[u8] = b"brainstem backup v1";
/// Item tags in the plaintext.
const ITEM_END: u8 = 0;
const ITEM_TREE: u8 = 1;
const ITEM_AUDIT: u8 = 2;

/// What a backup holds, readable without the key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub format: u32,
    /// When the snapshot was taken (unix ms).
    pub created_unix_ms: u64,
    /// The brainstemd version that wrote it.
    pub writer: String,
    /// Schema versions at the snapshot: `store` and each registered subsystem.
    pub schema: BTreeMap<String, u32>,
    /// Entries per sled tree at the snapshot instant (empty trees included).
    pub trees: BTreeMap<String, u64>,
    /// Audit segment files and the bytes they hold.
    pub audit_files: u64,
    pub audit_bytes: u64,
    /// The id of the master key the body is sealed under (not the key).
    pub master_key_id: String,
    /// 16 random bytes, hex: binds every chunk to this file.
    pub file_id: String,
    pub chunk_size: u64,
    pub chunks: u64,
    /// Plaintext bytes.
    pub plain_len: u64,
    /// Bytes after the header's SHA-256, and their SHA-256 (hex).
    pub body_len: u64,
    pub body_sha256: String,
}

/// One thing the plaintext carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A raw sled entry (the store's envelope included) of tree `tree`.
    Tree {
        tree: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// An audit segment file (`<state_dir>/audit/<name>`), up to what its writer had committed.
    Audit { name: String, bytes: Vec<u8> },
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a brainstem backup (bad magic)")]
    Magic,
    #[error(
        "the backup has format {found}, newer than this build reads ({FORMAT}); use a newer build"
    )]
    TooNew { found: u32 },
    #[error("the backup is truncated: {0}")]
    Truncated(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error(
        "chunk {index} does not open: another master key, or a damaged, reordered or foreign chunk"
    )]
    Unseal { index: u64 },
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// The metadata the writer supplies; [`write`] fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub created_unix_ms: u64,
    pub writer: String,
    pub schema: BTreeMap<String, u32>,
    pub trees: BTreeMap<String, u64>,
    pub audit_files: u64,
    pub audit_bytes: u64,
    pub master_key_id: String,
}

/// Appends `item` to a plaintext.
pub fn encode_item(item: &Item, out: &mut Vec<u8>) {
    match item {
        Item::Tree { tree, key, value } => {
            out.push(ITEM_TREE);
            put(out, tree.as_bytes());
            put(out, key);
            put(out, value);
        }
        Item::Audit { name, bytes } => {
            out.push(ITEM_AUDIT);
            put(out, name.as_bytes());
            put(out, bytes);
        }
    }
}

/// Ends a plaintext: a reader that finds no end marker was given a cut one.
pub fn encode_end(out: &mut Vec<u8>) {
    out.push(ITEM_END);
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads the items of a plaintext ([`open`]'s output).
pub fn decode_items(plain: &[u8]) -> Result<Vec<Item>, FormatError> {
    let mut items = Vec::new();
    let mut at = 0usize;
    let damaged = |what: &str| FormatError::Damaged(format!("plaintext: {what}"));
    loop {
        let Some(&tag) = plain.get(at) else {
            return Err(damaged("no end marker"));
        };
        at += 1;
        let take = |at: &mut usize| -> Result<Vec<u8>, FormatError> {
            let len_bytes = plain
                .get(*at..*at + 8)
                .ok_or_else(|| damaged("cut length"))?;
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
            *at += 8;
            let bytes = plain
                .get(*at..at.saturating_add(len))
                .ok_or_else(|| damaged("cut field"))?;
            *at += len;
            Ok(bytes.to_vec())
        };
        match tag {
            ITEM_END if at == plain.len() => return Ok(items),
            ITEM_END => return Err(damaged("bytes after the end marker")),
            ITEM_TREE => {
                let tree = String::from_utf8(take(&mut at)?).map_err(|_| damaged("tree name"))?;
                let key = take(&mut at)?;
                let value = take(&mut at)?;
                items.push(Item::Tree { tree, key, value });
            }
            ITEM_AUDIT => {
                let name = String::from_utf8(take(&mut at)?).map_err(|_| damaged("file name"))?;
                let bytes = take(&mut at)?;
                items.push(Item::Audit { name, bytes });
            }
            other => return Err(damaged(&format!("unknown item tag {other}"))),
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn aad(file_id: &[u8], index: u64, last: bool, header_sha: &[u8; 32]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 16 + 9 + 32);
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(&index.to_le_bytes());
    aad.push(u8::from(last));
    aad.extend_from_slice(header_sha);
    aad
}

/// Builds a whole backup file from `plain` (items, then [`encode_end`]), sealing each chunk with
/// `seal(plaintext, associated_data)`. `file_id` must be 16 fresh random bytes.
pub fn write<E: std::fmt::Display>(
    meta: Meta,
    file_id: [u8; 16],
    plain: &[u8],
    mut seal: impl FnMut(&[u8], &[u8]) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, FormatError> {
    let chunks: Vec<&[u8]> = if plain.is_empty() {
        vec![plain]
    } else {
        plain.chunks(CHUNK_SIZE).collect()
    };
    let count = chunks.len() as u64;
    // The body's length is known before sealing: every chunk grows by the same overhead.
    let body_len: u64 = chunks
        .iter()
        .map(|c| (4 + c.len() + SEAL_OVERHEAD) as u64)
        .sum();
    // The header names the body's hash, and the chunks' AAD names the header's: the header is
    // written with a placeholder hash first, then rewritten once the body is sealed. The AAD uses a
    // hash of the header *without* the body hash (the "binding"), so both can be fixed.
    let mut header = Header {
        format: FORMAT,
        created_unix_ms: meta.created_unix_ms,
        writer: meta.writer,
        schema: meta.schema,
        trees: meta.trees,
        audit_files: meta.audit_files,
        audit_bytes: meta.audit_bytes,
        master_key_id: meta.master_key_id,
        file_id: hex(&file_id),
        chunk_size: CHUNK_SIZE as u64,
        chunks: count,
        plain_len: plain.len() as u64,
        body_len,
        body_sha256: String::new(),
    };
    let binding = binding(&header)?;
    let mut body = Vec::with_capacity(body_len as usize);
    for (index, chunk) in chunks.iter().enumerate() {
        let index = index as u64;
        let sealed = seal(chunk, &aad(&file_id, index, index + 1 == count, &binding))
            .map_err(|err| FormatError::Seal(err.to_string()))?;
        if sealed.len() != chunk.len() + SEAL_OVERHEAD {
            return Err(FormatError::Seal(format!(
                "a sealed chunk has {} bytes, expected {}",
                sealed.len(),
                chunk.len() + SEAL_OVERHEAD
            )));
        }
        body.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        body.extend_from_slice(&sealed);
    }
    header.body_sha256 = hex(&sha256(&body));
    let header_json =
        serde_json::to_vec(&header).map_err(|err| FormatError::Seal(err.to_string()))?;
    let mut out = Vec::with_capacity(16 + header_json.len() + 32 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(header_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_json);
    out.extend_from_slice(&sha256(&header_json));
    out.extend_from_slice(&body);
    Ok(out)
}

/// SHA-256 of the header with its body hash blanked: what every chunk's AAD binds.
fn binding(header: &Header) -> Result<[u8; 32], FormatError> {
    let mut blank = header.clone();
    blank.body_sha256 = String::new();
    let json = serde_json::to_vec(&blank).map_err(|err| FormatError::Seal(err.to_string()))?;
    Ok(sha256(&json))
}

/// A parsed file: the header and where each sealed chunk is.
pub struct Parsed<'a> {
    pub header: Header,
    pub file_id: [u8; 16],
    chunks: Vec<&'a [u8]>,
}

/// Checks everything that needs no key: magic, format, the header and its SHA-256, the chunk
/// framing (count and sizes as the header says) and the body's SHA-256.
pub fn verify(file: &[u8]) -> Result<Parsed<'_>, FormatError> {
    if file.len() < 16 {
        return Err(if file.len() >= 8 && &file[..8] != MAGIC {
            FormatError::Magic
        } else {
            FormatError::Truncated(format!("{} bytes is shorter than the preamble", file.len()))
        });
    }
    if &file[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    let format = u32::from_le_bytes(file[8..12].try_into().unwrap_or_default());
    if format > FORMAT {
        return Err(FormatError::TooNew { found: format });
    }
    if format == 0 {
        return Err(FormatError::Damaged("format 0".to_owned()));
    }
    let header_len = u32::from_le_bytes(file[12..16].try_into().unwrap_or_default()) as usize;
    if header_len > MAX_HEADER {
        return Err(FormatError::Damaged(format!(
            "a header of {header_len} bytes"
        )));
    }
    let header_end = 16 + header_len;
    let header_json = file
        .get(16..header_end)
        .ok_or_else(|| FormatError::Truncated("the header is cut".to_owned()))?;
    let header_sha = file
        .get(header_end..header_end + 32)
        .ok_or_else(|| FormatError::Truncated("the header's SHA-256 is cut".to_owned()))?;
    if sha256(header_json).as_slice() != header_sha {
        return Err(FormatError::Damaged(
            "the header does not match its SHA-256".to_owned(),
        ));
    }
    let header: Header = serde_json::from_slice(header_json)
        .map_err(|err| FormatError::Damaged(format!("unreadable header: {err}")))?;
    if header.format != format {
        return Err(FormatError::Damaged(format!(
            "the header says format {}, the preamble {format}",
            header.format
        )));
    }
    let file_id: [u8; 16] = unhex(&header.file_id)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FormatError::Damaged("the header's file id".to_owned()))?;
    let body = &file[header_end + 32..];
    if (body.len() as u64) < header.body_len {
        return Err(FormatError::Truncated(format!(
            "the body has {} bytes, the header says {}",
            body.len(),
            header.body_len
        )));
    }
    if body.len() as u64 > header.body_len {
        return Err(FormatError::Damaged(format!(
            "{} bytes after the body",
            body.len() as u64 - header.body_len
        )));
    }
    if hex(&sha256(body)) != header.body_sha256 {
        return Err(FormatError::Damaged(
            "the body does not match the header's SHA-256".to_owned(),
        ));
    }
    let mut chunks = Vec::new();
    let mut at = 0usize;
    let max_sealed = header.chunk_size as usize + SEAL_OVERHEAD;
    while at < body.len() {
        let len_bytes = body
            .get(at..at + 4)
            .ok_or_else(|| FormatError::Truncated("a chunk's length is cut".to_owned()))?;
        let len = u32::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        if !(SEAL_OVERHEAD..=max_sealed).contains(&len) {
            return Err(FormatError::Damaged(format!(
                "chunk {} claims {len} bytes",
                chunks.len()
            )));
        }
        let sealed = body
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| FormatError::Truncated(format!("chunk {} is cut", chunks.len())))?;
        chunks.push(sealed);
        at += 4 + len;
    }
    if chunks.len() as u64 != header.chunks {
        return Err(FormatError::Damaged(format!(
            "{} chunks, the header says {}",
            chunks.len(),
            header.chunks
        )));
    }
    let sealed_plain: u64 = chunks
        .iter()
        .map(|c| (c.len() - SEAL_OVERHEAD) as u64)
        .sum();
    if sealed_plain != header.plain_len {
        return Err(FormatError::Damaged(format!(
            "the chunks hold {sealed_plain} bytes, the header says {}",
            header.plain_len
        )));
    }
    Ok(Parsed {
        header,
        file_id,
        chunks,
    })
}

impl Parsed<'_> {
    /// Opens every chunk in order with `unseal(sealed, associated_data)` and returns the plaintext.
    pub fn open<E>(
        &self,
        mut unseal: impl FnMut(&[u8], &[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, FormatError> {
        let binding = binding(&self.header)?;
        let count = self.chunks.len() as u64;
        let mut plain = Vec::with_capacity(self.header.plain_len as usize);
        for (index, sealed) in self.chunks.iter().enumerate() {
            let index = index as u64;
            let aad = aad(&self.file_id, index, index + 1 == count, &binding);
            let chunk = unseal(sealed, &aad).map_err(|_| FormatError::Unseal { index })?;
            plain.extend_from_slice(&chunk);
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use ring::rand::{SecureRandom, SystemRandom};

    struct Key(LessSafeKey);

    impl Key {
        fn new(byte: u8) -> Key {
            Key(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &[byte; 32]).unwrap(),
            ))
        }
        fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
            let mut nonce = [0u8; 12];
            SystemRandom::new().fill(&mut nonce).unwrap();
            let mut in_out = plain.to_vec();
            self.0
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut in_out,
                )
                .map_err(|_| "seal".to_owned())?;
            Ok([nonce.as_slice(), &in_out].concat())
        }
        fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
            let (nonce, ct) = sealed.split_at(12);
            let mut in_out = ct.to_vec();
            let plain = self
                .0
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce.try_into().unwrap()),
                    Aad::from(aad),
                    &mut in_out,
                )
                .map_err(|_| "unseal".to_owned())?;
            Ok(plain.to_vec())
        }
    }

    fn items(n: usize, value_len: usize) -> Vec<Item> {
        let mut items: Vec<Item> = (0..n)
            .map(|i| Item::Tree {
                tree: if i % 2 == 0 { "episodic" } else { "meta" }.to_owned(),
                key: (i as u64).to_be_bytes().to_vec(),
                value: vec![(i % 251) as u8; value_len],
            })
            .collect();
        items.push(Item::Audit {
            name: "00000000000000000001.seg".to_owned(),
            bytes: b"BSAUDIT1 and frames".to_vec(),
        });
        items
    }

    fn file(key: &Key, items: &[Item]) -> Vec<u8> {
        let mut plain = Vec::new();
        for item in items {
            encode_item(item, &mut plain);
        }
        encode_end(&mut plain);
        let meta = Meta {
            created_unix_ms: 1_700_000_000_000,
            writer: "test".to_owned(),
            schema: BTreeMap::from([("store".to_owned(), 1)]),
            trees: BTreeMap::from([("episodic".to_owned(), 2)]),
            audit_files: 1,
            audit_bytes: 19,
            master_key_id: "k1".to_owned(),
        };
        write(meta, [7u8; 16], &plain, |p, a| key.seal(p, a)).unwrap()
    }

    fn restore(key: &Key, file: &[u8]) -> Result<Vec<Item>, FormatError> {
        let parsed = verify(file)?;
        decode_items(&parsed.open(|s, a| key.unseal(s, a))?)
    }

    /// Over two chunks, so order and truncation matter.
    fn big() -> (Key, Vec<Item>, Vec<u8>) {
        let key = Key::new(1);
        let items = items(40, 40_000);
        let bytes = file(&key, &items);
        assert!(verify(&bytes).unwrap().header.chunks >= 2);
        (key, items, bytes)
    }

    #[test]
    fn a_backup_round_trips_over_several_chunks_and_when_empty() {
        let (key, items, bytes) = big();
        assert_eq!(restore(&key, &bytes).unwrap(), items);
        let empty = file(&key, &[]);
        assert_eq!(restore(&key, &empty).unwrap(), Vec::<Item>::new());
        let header = verify(&bytes).unwrap().header;
        assert_eq!(header.master_key_id, "k1");
        assert_eq!(header.trees["episodic"], 2);
    }

    #[test]
    fn truncation_anywhere_is_refused_without_the_key() {
        let (_, _, bytes) = big();
        for cut in [0, 5, 12, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(verify(&bytes[..cut]).is_err(), "cut at {cut} verified");
        }
        // The last whole chunk dropped, header left alone: the body is short.
        let parsed = verify(&bytes).unwrap();
        let last = parsed.chunks.last().unwrap().len() + 4;
        let err = verify(&bytes[..bytes.len() - last]).err().unwrap();
        assert!(matches!(err, FormatError::Truncated(_)), "{err}");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (key, _, bytes) = big();
        // Every byte of the preamble and header, and a spread of the body.
        let header_end = 16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize + 32;
        let positions = (0..header_end).chain((header_end..bytes.len()).step_by(997));
        for at in positions {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            assert!(verify(&damaged).is_err(), "a flip at {at} verified");
            assert!(restore(&key, &damaged).is_err(), "a flip at {at} restored");
        }
    }

    #[test]
    fn a_chunk_flip_with_a_recomputed_body_hash_still_fails_to_open() {
        // An attacker who fixes the hashes up still cannot change a chunk.
        let (key, _, bytes) = big();
        let mut damaged = bytes.clone();
        let last = damaged.len() - 20;
        damaged[last] ^= 0x80;
        let rewritten = rehash(&damaged);
        let parsed = verify(&rewritten).expect("the structure is intact");
        let err = parsed.open(|s, a| key.unseal(s, a)).err().unwrap();
        assert!(matches!(err, FormatError::Unseal { .. }), "{err}");
    }

    /// Recomputes the body hash in the header (and the header's hash) of `file`.
    fn rehash(file: &[u8]) -> Vec<u8> {
        let header_len = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
        let mut header: Header = serde_json::from_slice(&file[16..16 + header_len]).unwrap();
        let body = &file[16 + header_len + 32..];
        header.body_sha256 = hex(&sha256(body));
        header.body_len = body.len() as u64;
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&file[..12]);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&sha256(&json));
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reordered_or_dropped_chunks_do_not_open_even_with_fixed_up_hashes() {
        let (key, _, bytes) = big();
        let parsed = verify(&bytes).unwrap();
        let header_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let prefix = &bytes[..16 + header_len + 32];
        let framed = |chunks: &[&[u8]]| -> Vec<u8> {
            let mut out = prefix.to_vec();
            for c in chunks {
                out.extend_from_slice(&(c.len() as u32).to_le_bytes());
                out.extend_from_slice(c);
            }
            out
        };
        let mut swapped = parsed.chunks.clone();
        swapped.swap(0, 1);
        let reordered = rehash(&framed(&swapped));
        let err = restore(&key, &reordered).err().unwrap();
        assert!(matches!(err, FormatError::Unseal { index: 0 }), "{err}");
        // The last chunk dropped and the header edited to say so: the new last is not marked last.
        let shorter = &parsed.chunks[..parsed.chunks.len() - 1];
        let mut cut = rehash(&framed(shorter));
        let header_len = u32::from_le_bytes(cut[12..16].try_into().unwrap()) as usize;
        let mut header: Header = serde_json::from_slice(&cut[16..16 + header_len]).unwrap();
        header.chunks -= 1;
        header.plain_len = shorter
            .iter()
            .map(|c| (c.len() - SEAL_OVERHEAD) as u64)
            .sum();
        let json = serde_json::to_vec(&header).unwrap();
        let body = cut[16 + header_len + 32..].to_vec();
        cut.truncate(12);
        cut.extend_from_slice(&(json.len() as u32).to_le_bytes());
        cut.extend_from_slice(&json);
        cut.extend_from_slice(&sha256(&json));
        cut.extend_from_slice(&body);
        assert!(verify(&cut).is_ok());
        assert!(restore(&key, &cut).is_err(), "a truncated backup restored");
    }

    #[test]
    fn another_key_does_not_open() {
        let (_, _, bytes) = big();
        let err = restore(&Key::new(2), &bytes).err().unwrap();
        assert!(matches!(err, FormatError::Unseal { index: 0 }), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let (_, _, mut bytes) = big();
        bytes[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        let err = verify(&bytes).err().unwrap();
        assert!(matches!(err, FormatError::TooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer"));
    }
}
