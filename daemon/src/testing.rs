//! Helpers for the unit tests that check the code's own rules by reading its sources.

use std::path::Path;

/// Every `.rs` file under `daemon/src`: its path relative to `src` (`grpc/status.rs`) and its text.
pub fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&root).unwrap().to_string_lossy();
                let text = std::fs::read_to_string(&path).unwrap();
                files.push((relative.into_owned(), text));
            }
        }
    }
    assert!(
        files.len() > 20,
        "found only {} files under {root:?}",
        files.len()
    );
    files.sort();
    files
}
