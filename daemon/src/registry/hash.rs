//! Artifact files: resolving a requested path under the artifact roots, and the streaming SHA-256.
//!
//! A path is canonicalised (every symlink resolved) and must then lie under one of the canonicalised
//! roots, so a symlink inside a root that leads out of it is refused like a path outside. The file
//! is then opened with `O_NOFOLLOW | O_NONBLOCK` on its canonical path (a FIFO cannot hang the open), so a symlink swapped in after the check
//! is refused rather than followed. Hashing reads fixed-size buffers: memory stays at one buffer
//! whatever the file's size. It is blocking work; callers run it on the daemon's blocking pool.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file's SHA-256 (lowercase hex) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub sha256: String,
    pub size: u64,
}

/// Why a path cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathProblem {
    /// Not an absolute path, or empty.
    Invalid(String),
    /// Outside every artifact root (after resolving symlinks).
    Outside(String),
    /// No such file.
    Missing(String),
    /// Not a regular file, or unreadable.
    Unreadable(String),
}

/// The roots, canonicalised; a root that does not exist (yet) is skipped.
pub fn canonical_roots(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .collect()
}

/// `requested` resolved to its canonical path, which must lie under one of `roots` (canonical).
pub fn resolve(roots: &[PathBuf], requested: &str) -> Result<PathBuf, PathProblem> {
    let path = Path::new(requested);
    if requested.is_empty() || !path.is_absolute() {
        return Err(PathProblem::Invalid(
            "an absolute path under an artifact root is required".to_owned(),
        ));
    }
    if requested.contains('\0') {
        return Err(PathProblem::Invalid("contains a NUL byte".to_owned()));
    }
    // A missing path is NOT_FOUND only under a root; elsewhere it is refused like any path outside,
    // so callers learn nothing about which files exist outside the roots.
    let canonical = match std::fs::canonicalize(path) {
        Ok(canonical) => canonical,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if under_any(roots, path) {
                return Err(PathProblem::Missing("no such file".to_owned()));
            }
            return Err(PathProblem::Outside(
                "not under a configured artifact root".to_owned(),
            ));
        }
        Err(err) => return Err(PathProblem::Unreadable(err.kind().to_string())),
    };
    if !under_any(roots, &canonical) {
        let why = if under_any(roots, path) {
            "a symlink that leads out of the artifact roots"
        } else {
            "not under a configured artifact root"
        };
        return Err(PathProblem::Outside(why.to_owned()));
    }
    Ok(canonical)
}

fn under_any(roots: &[PathBuf], path: &Path) -> bool {
    roots
        .iter()
        .any(|root| path.starts_with(root) && path != root.as_path())
}

/// Streams the file at `path` (canonical, checked) through SHA-256 in `buffer`-sized reads.
pub fn hash_file(path: &Path, buffer: usize) -> std::io::Result<Hashed> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted under a root must not hang the open (a regular file ignores it).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    hash_reader(&mut file, buffer)
}

/// Whether `path` names a regular file (without following a final symlink).
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

fn hash_reader(file: &mut File, buffer: usize) -> std::io::Result<Hashed> {
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; buffer.max(4096)];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        context.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Hashed {
        sha256: brainstem_keys::signing::hex_encode(context.finish().as_ref()),
        size,
    })
}

/// A declared hash: 64 hex digits, compared case-insensitively (returned lowercase).
pub fn parse_declared(text: &str) -> Option<String> {
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}
