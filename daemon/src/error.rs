//! Errors that services return. They speak the domain; `grpc::status` turns them into `tonic::Status`
//! in one exhaustive match.

use std::borrow::Cow;
use std::time::Duration;

use crate::store::StoreError;

/// The most bytes of a request value that an error reply repeats; longer values end in "…".
pub const MAX_ECHO_BYTES: usize = 128;
/// The most field violations one INVALID_ARGUMENT reply lists; the rest are counted in one more.
pub const MAX_VIOLATIONS: usize = 20;
/// The most bytes of a violation's description in a reply (an echoed value plus its explanation).
pub const MAX_DESCRIPTION_BYTES: usize = 192;
/// The most bytes of an error message: the safety net for messages that quote request data without
/// [`truncate_for_reply`]. With the violations' caps, a reply's status and details stay well under
/// the 16 KiB header limit of default clients.
pub const MAX_REPLY_TEXT_BYTES: usize = 2048;

/// `text` cut to [`MAX_ECHO_BYTES`] on a character boundary, with "…" when something was cut. Every
/// error message that repeats a request value passes it through here, so a reply stays small
/// whatever the caller sent (a reply travels in HTTP/2 headers; clients refuse large ones).
pub fn truncate_for_reply(text: &str) -> Cow<'_, str> {
    truncate_to(text, MAX_ECHO_BYTES)
}

/// `text` cut to at most `max` bytes (plus "…") on a character boundary.
pub fn truncate_to(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// The violations a reply lists: at most [`MAX_VIOLATIONS`], each field and description bounded,
/// and when there were more, one last violation that counts the rest.
pub fn bounded_violations(violations: &[FieldViolation]) -> Vec<FieldViolation> {
    let mut out: Vec<FieldViolation> = violations
        .iter()
        .take(MAX_VIOLATIONS)
        .map(|v| FieldViolation {
            field: truncate_for_reply(&v.field).into_owned(),
            description: truncate_to(&v.description, MAX_DESCRIPTION_BYTES).into_owned(),
        })
        .collect();
    if violations.len() > MAX_VIOLATIONS {
        out.push(FieldViolation::new(
            "…",
            format!("… and {} more", violations.len() - MAX_VIOLATIONS),
        ));
    }
    out
}

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("no authenticated principal: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A limit was hit (rate, queue, quota). The caller may retry after `retry_after`.
    #[error("{what} exhausted; retry after {retry_after:?}")]
    ResourceExhausted { what: String, retry_after: Duration },
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing to create exists already (a registered model version).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is valid but the system is not in a state to run it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Stored data is damaged and was not returned (DATA_LOSS); the text names what, never a value.
    #[error("data loss: {0}")]
    DataLoss(String),
    /// The subsystem is temporarily unable to serve (stopped, failed, restarting).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The call ran out of time (the caller's `grpc-timeout` or the server's default).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// Something broke inside the daemon. The caller sees only an error id; the cause is logged.
    #[error("{what}: {source}")]
    Internal {
        /// The subsystem, for `brainstem_errors_total{subsystem,kind="internal"}`.
        subsystem: &'static str,
        /// What was being done ("audit query", "policy validation").
        what: &'static str,
        source: BoxError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request message could not be decoded (not protobuf, a string that is not UTF-8, messages
    /// nested past the decoder's limit, a truncated frame). The text says why, briefly.
    #[error("the request could not be decoded: {0}")]
    Undecodable(String),
}

/// The cause of an [`ServiceError::Internal`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ServiceError {
    /// An internal failure of `subsystem` while doing `what`, e.g. a `spawn_blocking` task that
    /// panicked or was cancelled (`JoinError`).
    pub fn internal(
        subsystem: &'static str,
        what: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        ServiceError::Internal {
            subsystem,
            what,
            source: source.into(),
        }
    }
}

/// "field: description; …" for the message, bounded like the details: at most [`MAX_VIOLATIONS`]
/// and fewer when they would not fit [`MAX_REPLY_TEXT_BYTES`], then "… and N more".
fn summarize(violations: &[FieldViolation]) -> String {
    // Room for "invalid request: " before and "; … and N more" after.
    const BUDGET: usize = MAX_REPLY_TEXT_BYTES - 64;
    let mut out = String::new();
    for (i, v) in bounded_violations(violations).iter().enumerate() {
        let item = format!("{}: {}", v.field, v.description);
        if i == MAX_VIOLATIONS || out.len() + item.len() + 2 > BUDGET {
            out.push_str(&format!("; … and {} more", violations.len() - i));
            break;
        }
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_short_text_and_cuts_on_a_char_boundary() {
        assert!(matches!(
            truncate_for_reply("short"),
            Cow::Borrowed("short")
        ));
        let exact = "a".repeat(MAX_ECHO_BYTES);
        assert_eq!(truncate_for_reply(&exact), exact.as_str());
        let long = "a".repeat(MAX_ECHO_BYTES + 1);
        let cut = truncate_for_reply(&long);
        assert_eq!(cut, format!("{}…", "a".repeat(MAX_ECHO_BYTES)));
        // "é" is two bytes: 127 ASCII bytes then "é" straddles the limit and is dropped whole.
        let straddling = format!("{}é{}", "a".repeat(MAX_ECHO_BYTES - 1), "b".repeat(10));
        let cut = truncate_for_reply(&straddling);
        assert_eq!(cut, format!("{}…", "a".repeat(MAX_ECHO_BYTES - 1)));
    }

    #[test]
    fn violations_are_capped_with_a_count_of_the_rest() {
        let mut many: Vec<FieldViolation> = (0..100_000)
            .map(|i| FieldViolation::new(format!("ids[{i}]"), "not an episode id"))
            .collect();
        many[3].description = "x".repeat(1 << 20);
        let bounded = bounded_violations(&many);
        assert_eq!(bounded.len(), MAX_VIOLATIONS + 1);
        assert_eq!(bounded[0].field, "ids[0]");
        assert_eq!(bounded[MAX_VIOLATIONS].description, "… and 99980 more");
        assert!(
            bounded
                .iter()
                .all(|v| v.description.len() <= MAX_REPLY_TEXT_BYTES)
        );
        let message = ServiceError::InvalidArgument(many).to_string();
        assert!(
            message.len() <= MAX_REPLY_TEXT_BYTES,
            "{} bytes",
            message.len()
        );
        assert!(message.ends_with(" more"), "{message}");
        let listed = message.matches("ids[").count();
        assert!(
            message.ends_with(&format!("… and {} more", 100_000 - listed)),
            "{message}"
        );

        let few = vec![FieldViolation::new("a", "b")];
        assert_eq!(bounded_violations(&few), few);
    }
}
