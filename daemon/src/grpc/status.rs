//! The one place where domain errors become `tonic::Status`. The match is exhaustive (no `_` arm): a
//! new error variant does not compile until someone decides its code.
//!
//! INTERNAL answers carry no internals: the cause is logged with an error id that the message repeats.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::ServiceError;
use crate::store::StoreError;

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        match err {
            ServiceError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                let message = ServiceError::InvalidArgument(violations).to_string();
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::Unauthenticated(reason) => Status::unauthenticated(reason),
            ServiceError::PermissionDenied(reason) => Status::permission_denied(reason),
            ServiceError::ResourceExhausted { what, retry_after } => {
                let mut details = ErrorDetails::new();
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!(
                        "{what} exhausted; retry after {} ms",
                        retry_after.as_millis().max(1)
                    ),
                    details,
                )
            }
            ServiceError::NotFound(what) => Status::not_found(what),
            ServiceError::FailedPrecondition(why) => Status::failed_precondition(why),
            ServiceError::Unavailable(why) => Status::unavailable(why),
            ServiceError::Store(err) => store_status(err),
        }
    }
}

fn store_status(err: StoreError) -> Status {
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
            Status::data_loss(format!(
                "stored record {tree}/{key} is damaged and was not returned"
            ))
        }
        StoreError::Io(_)
        | StoreError::Open { .. }
        | StoreError::StateDir { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::SubsystemSchemaTooNew { .. }
        | StoreError::NoMigration { .. }
        | StoreError::Encode { .. } => internal(&err),
    }
}

fn internal(err: &dyn std::error::Error) -> Status {
    let id = crate::store::unix_ms_now();
    tracing::error!(error = %err, error_id = id, "internal error");
    crate::runtime::events::ErrorOccurred {
        subsystem: "grpc",
        kind: "internal",
    }
    .emit();
    Status::internal(format!("internal error (id {id}); see the daemon log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldViolation;

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
}
