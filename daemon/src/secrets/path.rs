//! Secret paths: `/`-separated segments of `[A-Za-z0-9._-]`, at most [`MAX_PATH_BYTES`], no empty,
//! `.` or `..` segment. The canonical form starts with `/` (`agents/web/db` and `/agents/web/db` are
//! one secret), which is also the resource a scoped capability (`secrets.read:/agents/web/*`) names.

use std::borrow::Cow;

use crate::error::{FieldViolation, truncate_for_reply};

/// Longest path, in bytes (canonical form).
pub const MAX_PATH_BYTES: usize = 512;

/// The canonical form of a secret's path, or why it is not one (for `field`). A path already in
/// canonical form (as clients send it) is borrowed, not copied.
pub fn canonical<'a>(path: &'a str, field: &str) -> Result<Cow<'a, str>, FieldViolation> {
    let bad = |why: String| FieldViolation::new(field, why);
    if path.is_empty() || path == "/" {
        return Err(bad("required: a path such as /agents/web/db".to_owned()));
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    check_segments(rest, path, field)?;
    if 1 + rest.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "{} bytes; a path is at most {MAX_PATH_BYTES}",
            1 + rest.len()
        )));
    }
    if rest.len() < path.len() {
        return Ok(Cow::Borrowed(path));
    }
    let mut canonical = String::with_capacity(1 + rest.len());
    canonical.push('/');
    canonical.push_str(rest);
    Ok(Cow::Owned(canonical))
}

/// The canonical form of a folder prefix for List and Watch: `""` (every secret) or `/a/b` (the
/// secret `/a/b` and everything below it). A trailing `/` is allowed.
pub fn canonical_prefix(prefix: &str, field: &str) -> Result<String, FieldViolation> {
    let trimmed = prefix.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        if prefix.contains("//") {
            return Err(FieldViolation::new(field, "empty path segment (\"//\")"));
        }
        return Ok(String::new());
    }
    let canonical = canonical(trimmed, field)?.into_owned();
    if prefix.len() > MAX_PATH_BYTES + 2 {
        return Err(FieldViolation::new(
            field,
            format!("a prefix is at most {MAX_PATH_BYTES} bytes"),
        ));
    }
    Ok(canonical)
}

/// Is `path` the folder `prefix` (canonical, see [`canonical_prefix`]) or below it?
pub fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Checks every segment of `rest` in one pass over its bytes (every Get and Put runs it); the
/// message names the first fault.
fn check_segments(rest: &str, original: &str, field: &str) -> Result<(), FieldViolation> {
    let bad = |why: String| {
        FieldViolation::new(field, format!("{:?}: {why}", truncate_for_reply(original)))
    };
    let bytes = rest.as_bytes();
    let mut start = 0;
    // One step past the end closes the last segment, as a '/' closes the others.
    for at in 0..=bytes.len() {
        let b = bytes.get(at).copied().unwrap_or(b'/');
        if b == b'/' {
            match bytes.get(start..at) {
                Some(b"") => {
                    return Err(bad(
                        "empty path segment (\"//\", or \"/\" at the end)".to_owned()
                    ));
                }
                Some(b"." | b"..") => {
                    return Err(bad("\".\" and \"..\" segments are not allowed".to_owned()));
                }
                _ => {}
            }
            start = at + 1;
        } else if !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            // A byte outside the set starts a character outside it (ASCII or not).
            let c = rest
                .get(at..)
                .and_then(|tail| tail.chars().next())
                .unwrap_or('?');
            return Err(bad(format!(
                "{c:?} is not allowed; segments use [A-Za-z0-9._-]"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_canonical_with_one_leading_slash() {
        assert_eq!(
            canonical("agents/web/db", "path").unwrap(),
            "/agents/web/db"
        );
        assert_eq!(
            canonical("/agents/web/db", "path").unwrap(),
            "/agents/web/db"
        );
        assert_eq!(canonical("/a.b_c-d/E9", "path").unwrap(), "/a.b_c-d/E9");
    }

    #[test]
    fn bad_paths_name_the_field_and_the_reason() {
        for (path, why) in [
            ("", "required"),
            ("/", "required"),
            ("//a", "empty path segment"),
            ("/a//b", "empty path segment"),
            ("/a/", "empty path segment"),
            ("/a/../b", "\"..\""),
            ("/a/./b", "\"..\""),
            ("/a b", "' ' is not allowed"),
            ("/a/b*", "'*' is not allowed"),
            ("/é", "'é' is not allowed"),
            ("/ab/cd/x€y", "'€' is not allowed"),
            ("/a\0b", "is not allowed"),
        ] {
            let err = canonical(path, "path").unwrap_err();
            assert_eq!(err.field, "path");
            assert!(
                err.description.contains(why),
                "{path:?}: {}",
                err.description
            );
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(
            canonical(&long, "path")
                .unwrap_err()
                .description
                .contains("at most 512")
        );
        let fits = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        assert!(canonical(&fits, "path").is_ok());
    }

    #[test]
    fn prefixes_are_folders() {
        assert_eq!(canonical_prefix("", "prefix").unwrap(), "");
        assert_eq!(canonical_prefix("/", "prefix").unwrap(), "");
        assert_eq!(
            canonical_prefix("/agents/web/", "prefix").unwrap(),
            "/agents/web"
        );
        assert_eq!(canonical_prefix("agents", "prefix").unwrap(), "/agents");
        assert!(canonical_prefix("/a/../b", "prefix").is_err());
        assert!(canonical_prefix("//", "prefix").is_err());
        assert!(under("/agents/web/db", "/agents/web"));
        assert!(under("/agents/web", "/agents/web"));
        assert!(!under("/agents/webhook", "/agents/web"));
        assert!(under("/anything", ""));
    }
}
