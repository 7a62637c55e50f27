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
            crate::events::ErrorOccurred {
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
        | StoreError::Encode { .. } => internal(&err),
    }
}

fn internal(err: &dyn std::error::Error) -> Status {
    let id = crate::store::unix_ms_now();
    tracing::error!(error = %err, error_id = id, "internal error");
    crate::events::ErrorOccurred {
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
