//! Generated code for the `brainstem.v1` protobuf package: messages, service traits for the daemon,
//! clients for callers, and the encoded descriptor set that server reflection serves.
//!
//! The `.proto` files under `proto/brainstem/v1/` are the public API. Other languages generate their own
//! stubs from the same files (see the README for Python).
//!
//! [`flagd`]: the flagd evaluation protocol (`flagd.evaluation.v1`, `v2`), with its own descriptor set.
//!
//! [`json`]: `google.protobuf.Struct` ↔ JSON, which the daemon and brainstemctl both need.

pub mod json;

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("brainstem.v1");

    /// Encoded `FileDescriptorSet` of every `brainstem.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("brainstem_v1_descriptor");
}

/// The flagd flag-evaluation protocol (open-feature/flagd-schemas), served so that OpenFeature flagd
/// providers work unchanged.
pub mod flagd {
    pub mod evaluation {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("flagd.evaluation.v1");
        }
        pub mod v2 {
            #![allow(clippy::all, missing_docs)]
            tonic::include_proto!("flagd.evaluation.v2");
        }
    }

    /// Encoded `FileDescriptorSet` of `flagd.evaluation.v1` and `v2`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("flagd_descriptor");
}

/// The canonical name of a gRPC status code (`PERMISSION_DENIED`), as metrics labels and CLI output use.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
