//! The one place where domain errors become `tonic::Status`. The match is exhaustive (no `_` arm): a
//! new error variant does not compile until someone decides its code.
//!
//! INTERNAL answers carry no internals: the cause is logged with an error id that the message repeats
//! (and the `brainstem-error-id` metadata carries).
//!
//! Replies are bounded: at most [`crate::error::MAX_VIOLATIONS`] field violations (plus one that counts the rest),
//! and no message or description longer than [`MAX_REPLY_TEXT_BYTES`]. Messages that quote a request
//! value cut it with [`crate::error::truncate_for_reply`] where they are written; the caps here are the
//! net for any that do not.

use std::borrow::Cow;
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::correlation::{CorrelationId, ERROR_INFO_KEY};
use crate::error::{MAX_REPLY_TEXT_BYTES, ServiceError, bounded_violations};
use crate::store::StoreError;

/// The metadata key of the error id on every INTERNAL answer this file builds. An INTERNAL answer
/// without it was built by tonic itself (see [`undecodable`]).
pub const ERROR_ID_KEY: &str = "brainstem-error-id";

fn bounded(text: &str) -> Cow<'_, str> {
    crate::error::truncate_to(text, MAX_REPLY_TEXT_BYTES)
}

impl From<ServiceError> for Status {
    /// The Status of `err`, with the correlation id of the call being handled on this task (if any);
    /// see [`status_for`].
    fn from(err: ServiceError) -> Status {
        status_for(err, super::correlation::current().as_ref())
    }
}

/// What a Status is made of before it is encoded.
struct Parts {
    code: Code,
    message: String,
    details: Option<ErrorDetails>,
    /// The ErrorInfo reason, when the error names one.
    reason: Option<&'static str>,
    /// The id an INTERNAL answer's cause was logged under.
    error_id: Option<u64>,
}

impl Parts {
    fn plain(code: Code, message: &str) -> Parts {
        Parts {
            code,
            message: bounded(message).into_owned(),
            details: None,
            reason: None,
            error_id: None,
        }
    }
}

/// The Status of `err`. With a correlation id, the reply carries it in an ErrorInfo detail (domain
/// `brainstem`, metadata `correlation_id`; the reason is the code's name unless the error names its
/// own) and as `x-request-id` metadata. The layer calls this with the id it assigned for the
/// refusals it answers itself; handlers get it through `From`, which reads
/// [`super::correlation::current`].
pub fn status_for(err: ServiceError, correlation: Option<&CorrelationId>) -> Status {
    let Parts {
        code,
        message,
        details,
        reason,
        error_id,
    } = parts(err);
    let details = match correlation {
        None => details,
        Some(id) => {
            let mut details = details.unwrap_or_default();
            let metadata = HashMap::from([(ERROR_INFO_KEY.to_owned(), id.as_str().to_owned())]);
            details.set_error_info(
                reason.unwrap_or_else(|| brainstem_proto::code_name(code)),
                ERROR_DOMAIN,
                metadata,
            );
            Some(details)
        }
    };
    let mut status = match details {
        Some(details) => Status::with_error_details(code, message, details),
        None => Status::new(code, message),
    };
    if let Some(id) = correlation {
        status
            .metadata_mut()
            .as_mut()
            .insert(super::correlation::HEADER, id.header_value().clone());
    }
    if let Some(id) = error_id {
        status.metadata_mut().insert(ERROR_ID_KEY, id.into());
    }
    status
}

/// The ErrorInfo domain of every error this daemon answers.
pub const ERROR_DOMAIN: &str = "brainstem";

fn parts(err: ServiceError) -> Parts {
    match err {
        ServiceError::InvalidArgument(violations) => {
            let mut details = ErrorDetails::new();
            for v in bounded_violations(&violations) {
                details.add_bad_request_violation(v.field, v.description);
            }
            // The message lists the same bounded violations (`ServiceError`'s Display).
            let message = ServiceError::InvalidArgument(violations).to_string();
            Parts {
                details: Some(details),
                ..Parts::plain(Code::InvalidArgument, &message)
            }
        }
        ServiceError::Unauthenticated(reason) => Parts::plain(Code::Unauthenticated, &reason),
        ServiceError::PermissionDenied(reason) => Parts::plain(Code::PermissionDenied, &reason),
        ServiceError::ResourceExhausted { what, retry_after } => {
            let mut details = ErrorDetails::new();
            details.set_retry_info(Some(retry_after));
            let message = format!(
                "{what} exhausted; retry after {} ms",
                retry_after.as_millis().max(1)
            );
            Parts {
                details: Some(details),
                ..Parts::plain(Code::ResourceExhausted, &message)
            }
        }
        ServiceError::NotFound(what) => Parts::plain(Code::NotFound, &what),
        ServiceError::AlreadyExists(what) => Parts::plain(Code::AlreadyExists, &what),
        ServiceError::FailedPrecondition(why) => Parts::plain(Code::FailedPrecondition, &why),
        ServiceError::DataLoss(what) => Parts::plain(Code::DataLoss, &what),
        ServiceError::Unavailable(why) => Parts::plain(Code::Unavailable, &why),
        ServiceError::DeadlineExceeded(why) => Parts::plain(Code::DeadlineExceeded, &why),
        ServiceError::Undecodable(why) => Parts {
            // Unbounded as before: `why` is already cut by `decode_reason`.
            message: format!("the request could not be decoded: {why}"),
            ..Parts::plain(Code::InvalidArgument, "")
        },
        ServiceError::Internal {
            subsystem,
            ref what,
            ref source,
        } => internal(subsystem, &format!("{what}: {source}"), source.as_ref()),
        ServiceError::Store(err) => store_status(err),
    }
}

/// The retry delay a write refused for a full disk suggests.
const NO_SPACE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn store_status(err: StoreError) -> Parts {
    match err {
        StoreError::Corrupt {
            ref tree, ref key, ..
        } => {
            tracing::error!(error = %err, "corrupted record");
            crate::runtime::events::ErrorOccurred {
                subsystem: "store",
                kind: "corrupt",
            }
            .emit();
            Parts::plain(
                Code::DataLoss,
                &format!("stored record {tree}/{key} is damaged and was not returned"),
            )
        }
        StoreError::NoSpace { .. } => {
            // Logged by the store's guard once per interval, not here per call.
            let mut details = ErrorDetails::new();
            details.set_retry_info(Some(NO_SPACE_RETRY));
            details.set_error_info("STORE_NO_SPACE", ERROR_DOMAIN, HashMap::new());
            Parts {
                details: Some(details),
                reason: Some("STORE_NO_SPACE"),
                ..Parts::plain(
                    Code::ResourceExhausted,
                    &format!("{err}; retry after {} ms", NO_SPACE_RETRY.as_millis()),
                )
            }
        }
        StoreError::Io(_)
        | StoreError::Integrity { .. }
        | StoreError::Locked { .. }
        | StoreError::Open { .. }
        | StoreError::Damaged { .. }
        | StoreError::StateDir { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::SubsystemSchemaTooNew { .. }
        | StoreError::NoMigration { .. }
        | StoreError::Encode { .. } => internal("grpc", &err.to_string(), &err),
    }
}

/// Logs the cause (with its source chain) under an error id and answers INTERNAL with the id only.
fn internal(
    subsystem: &'static str,
    error: &str,
    cause: &(dyn std::error::Error + 'static),
) -> Parts {
    let id = crate::store::unix_ms_now();
    let mut chain = Vec::new();
    let mut source = cause.source();
    while let Some(err) = source {
        chain.push(err.to_string());
        source = err.source();
    }
    tracing::error!(error, caused_by = ?chain, error_id = id, subsystem, "internal error");
    crate::runtime::events::ErrorOccurred {
        subsystem,
        kind: "internal",
    }
    .emit();
    Parts {
        error_id: Some(id),
        ..Parts::plain(
            Code::Internal,
            &format!("internal error (id {id}); see the daemon log"),
        )
    }
}

/// The request-decoding failure behind a response, if it is one. tonic decodes the request message
/// inside the generated service, before the handler runs, and answers a message it cannot decode (a
/// prost `DecodeError`: not protobuf, a string that is not UTF-8, nesting past prost's limit; a truncated
/// frame; a bad compressed flag; no message at all) with a trailers-only INTERNAL. Everything this
/// daemon answers INTERNAL is built by [`internal`] above and carries [`ERROR_ID_KEY`] (and nothing
/// else in `daemon/src` builds a `Status`, which the scanner below holds), so a trailers-only INTERNAL
/// without that key comes from tonic's request path: the caller sent something undecodable. Response
/// encoding failures would arrive in trailers after the headers, never here.
pub fn undecodable<B>(response: &http::Response<B>) -> Option<ServiceError> {
    let headers = response.headers();
    if headers.get("grpc-status")?.as_bytes() != b"13" || headers.contains_key(ERROR_ID_KEY) {
        return None;
    }
    let status = Status::from_header_map(headers)?;
    Some(ServiceError::Undecodable(decode_reason(status.message())))
}

/// A short reason for tonic's or prost's decode message, without the decoder's field path (which can
/// be as deep as the nesting that was refused).
pub(crate) fn decode_reason(message: &str) -> String {
    let reason = if message.contains("recursion limit reached") {
        "messages nested too deeply (a Struct or ListValue more than 32 levels deep may be refused)"
    } else if message.contains("not UTF-8") {
        "a string field is not valid UTF-8"
    } else if message.starts_with("failed to decode Protobuf message") {
        "the message is not valid protobuf for this method"
    } else if message.contains("Missing request message") {
        "the request carries no message"
    } else {
        // Framing: a truncated frame, a compressed flag without an encoding, …
        return crate::error::truncate_for_reply(message).into_owned();
    };
    reason.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{FieldViolation, MAX_VIOLATIONS};

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status: Status =
            ServiceError::InvalidArgument(vec![FieldViolation::new("delay_ms", "at most 10000")])
                .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        assert_eq!(bad.field_violations[0].field, "delay_ms");
        assert!(status.message().contains("delay_ms: at most 10000"));
    }

    #[test]
    fn resource_exhausted_carries_retry_info() {
        let status: Status = ServiceError::ResourceExhausted {
            what: "rate limit for Policy/Check".into(),
            retry_after: std::time::Duration::from_millis(1500),
        }
        .into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let retry = details.retry_info().expect("RetryInfo detail");
        assert_eq!(
            retry.retry_delay,
            Some(std::time::Duration::from_millis(1500))
        );
        assert!(status.message().contains("1500 ms"), "{}", status.message());
    }

    #[test]
    fn corruption_is_data_loss_and_internals_stay_inside() {
        let status: Status = ServiceError::Store(StoreError::Corrupt {
            tree: "meta".into(),
            key: "boot".into(),
            reason: "checksum mismatch".into(),
        })
        .into();
        assert_eq!(status.code(), Code::DataLoss);
        let status: Status = ServiceError::Store(StoreError::SchemaTooNew {
            found: 9,
            supported: 1,
        })
        .into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("schema"), "{}", status.message());
    }

    #[test]
    fn internal_errors_answer_an_id_and_keep_the_cause_inside() {
        let cause = std::io::Error::other("disk on fire at /var/lib/brainstem");
        let status: Status = ServiceError::internal("audit", "audit query", cause).into();
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().starts_with("internal error (id "),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("fire"), "{}", status.message());
    }

    #[test]
    fn token_key_failures_are_internal_not_unavailable() {
        for err in [
            crate::tokens::TokenError::Random,
            crate::tokens::TokenError::Undecryptable { kid: "k1".into() },
            crate::tokens::TokenError::MasterKey {
                path: "/secret/master.key".into(),
                reason: "mode 0644".into(),
            },
        ] {
            let status = Status::from(ServiceError::from(err));
            assert_eq!(status.code(), Code::Internal, "{status:?}");
            assert!(!status.message().contains("master"), "{}", status.message());
        }
    }

    #[test]
    fn replies_are_bounded_however_large_the_input() {
        let huge = "c".repeat(1 << 20);
        let mut many: Vec<FieldViolation> = (0..100_000)
            .map(|i| FieldViolation::new(format!("ids[{i}]"), "not an id"))
            .collect();
        many[0].description = huge.clone();
        many[1].field = huge.clone();
        let status: Status = ServiceError::InvalidArgument(many).into();
        assert!(status.message().len() <= MAX_REPLY_TEXT_BYTES + 3);
        let details = status.get_error_details();
        let bad = details.bad_request().expect("BadRequest detail");
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            bad.field_violations[MAX_VIOLATIONS].description,
            "… and 99980 more"
        );
        assert!(
            status.details().len() < 8 * 1024,
            "{}",
            status.details().len()
        );

        for err in [
            ServiceError::PermissionDenied(huge.clone()),
            ServiceError::NotFound(huge.clone()),
            ServiceError::FailedPrecondition(huge.clone()),
            ServiceError::Unauthenticated(huge.clone()),
            ServiceError::Unavailable(huge.clone()),
            ServiceError::DeadlineExceeded(huge.clone()),
            ServiceError::ResourceExhausted {
                what: huge.clone(),
                retry_after: std::time::Duration::from_secs(1),
            },
        ] {
            let status = Status::from(err);
            assert!(
                status.message().len() <= MAX_REPLY_TEXT_BYTES + 3,
                "{:?}: {} bytes",
                status.code(),
                status.message().len()
            );
        }
    }

    #[test]
    fn tonic_decode_failures_become_invalid_argument_and_ours_stay_internal() {
        // What tonic answers for a prost DecodeError: a trailers-only INTERNAL with the decoder path.
        let deep = format!(
            "failed to decode Protobuf message: {}recursion limit reached",
            "Struct.fields: Value.kind: ".repeat(40)
        );
        let from_tonic: http::Response<()> = Status::internal(deep).into_http();
        let err = undecodable(&from_tonic).expect("a decode failure");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("nested too deeply"),
            "{}",
            status.message()
        );
        assert!(
            !status.message().contains("Struct.fields"),
            "{}",
            status.message()
        );

        let utf8 = Status::internal(
            "failed to decode Protobuf message: PingRequest.x: invalid string value: data is not UTF-8 encoded",
        );
        let err = undecodable(&utf8.into_http::<()>()).expect("a decode failure");
        assert!(err.to_string().contains("UTF-8"), "{err}");

        // Our own INTERNAL carries the error id and is left alone; so is every other code.
        let ours: Status = ServiceError::internal("audit", "x", std::io::Error::other("y")).into();
        assert!(ours.metadata().get(ERROR_ID_KEY).is_some());
        assert!(undecodable(&ours.into_http::<()>()).is_none());
        let denied: Status = ServiceError::PermissionDenied("no".into()).into();
        assert!(undecodable(&denied.into_http::<()>()).is_none());
        let ok = http::Response::new(());
        assert!(undecodable(&ok).is_none());
    }

    #[test]
    fn a_correlation_id_goes_into_error_info_and_metadata() {
        let id = CorrelationId::from_headers(&{
            let mut h = http::HeaderMap::new();
            h.insert("x-request-id", http::HeaderValue::from_static("req-7"));
            h
        });
        let cases = [
            (
                ServiceError::PermissionDenied("no".into()),
                "PERMISSION_DENIED",
            ),
            (
                ServiceError::InvalidArgument(vec![FieldViolation::new("f", "bad")]),
                "INVALID_ARGUMENT",
            ),
            (
                ServiceError::Store(StoreError::NoSpace {
                    path: "/s".into(),
                    available: 1,
                    reserve: 2,
                }),
                "STORE_NO_SPACE",
            ),
            (
                ServiceError::internal("audit", "x", std::io::Error::other("y")),
                "INTERNAL",
            ),
        ];
        for (err, reason) in cases {
            let status = status_for(err, Some(&id));
            let details = status.get_error_details();
            let info = details.error_info().expect("ErrorInfo");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(
                info.metadata.get(ERROR_INFO_KEY).map(String::as_str),
                Some("req-7")
            );
            assert_eq!(
                status
                    .metadata()
                    .get("x-request-id")
                    .map(|v| v.to_str().unwrap()),
                Some("req-7")
            );
        }
        // Other details survive beside it.
        let status = status_for(
            ServiceError::InvalidArgument(vec![FieldViolation::new("f", "bad")]),
            Some(&id),
        );
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations
                .len(),
            1
        );
        // Without an id (outside any call): no ErrorInfo is invented.
        let status = status_for(ServiceError::NotFound("x".into()), None);
        assert!(status.get_error_details().error_info().is_none());
        assert!(status.metadata().get("x-request-id").is_none());
    }

    #[test]
    fn deadline_exceeded_keeps_its_message() {
        let status: Status =
            ServiceError::DeadlineExceeded("deadline of 100 ms exceeded".into()).into();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.message(), "deadline of 100 ms exceeded");
    }

    /// The invariant "no `Status` is built outside this file", checked by reading the sources: every
    /// `Status::<constructor>` or `Status {` outside `grpc/status.rs` and outside test code fails.
    /// `Status::from(ServiceError)` (this file's mapping) is the one allowed way in.
    #[test]
    fn no_status_is_built_outside_this_file() {
        let mut offenders = Vec::new();
        for (relative, text) in crate::testing::sources() {
            if relative == "grpc/status.rs" || relative.ends_with("tests.rs") {
                continue;
            }
            for (line, hit) in status_constructions(&text) {
                offenders.push(format!("{relative}:{line}: {hit}"));
            }
        }
        assert!(
            offenders.is_empty(),
            "build these through ServiceError instead:\n{}",
            offenders.join("\n")
        );
    }

    #[test]
    fn the_scanner_finds_constructions_and_skips_tests_and_comments() {
        let text = r#"
use tonic::Status;
// Status::internal("in a comment")
fn a() -> Status { Status::internal("x") }
fn b() -> Status { tonic::Status::new(tonic::Code::Unknown, "y") }
fn c(e: ServiceError) -> Status { Status::from(e) }
fn d() -> ServingStatus { ServingStatus::Serving }
fn e() -> ActorStatus { ActorStatus { name } }
#[cfg(test)]
mod tests {
    fn f() -> Status { Status::unavailable("test") }
}
fn g() -> Status { Status::from_error(err) }
"#;
        let hits: Vec<usize> = status_constructions(text)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(hits, [4, 5, 13]);
    }

    /// `(line, text)` of each `Status::x(` other than `Status::from(`, and each `Status {`, outside
    /// comments and `#[cfg(test)]` items.
    fn status_constructions(text: &str) -> Vec<(usize, String)> {
        let mut hits = Vec::new();
        let mut lines = text.lines().enumerate();
        while let Some((i, line)) = lines.next() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if code.starts_with("#[cfg(test)]") {
                // Skip the next item: `mod x;`, or everything up to its closing brace.
                let mut depth = 0i32;
                let mut opened = false;
                for (_, item) in lines.by_ref() {
                    depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                    opened |= item.contains('{');
                    if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                        break;
                    }
                }
                continue;
            }
            for (at, _) in code.match_indices("Status") {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &code[at + "Status".len()..];
                let built = if let Some(call) = rest.strip_prefix("::") {
                    call.starts_with(|c: char| c.is_ascii_lowercase()) && !call.starts_with("from(")
                } else {
                    rest.trim_start().starts_with('{')
                        && !code.contains("->")
                        && !code.starts_with("impl")
                };
                if built {
                    hits.push((i + 1, code.to_owned()));
                }
            }
        }
        hits
    }
}
