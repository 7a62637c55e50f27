//! Generated code for the `brainstem.v1` protobuf package: messages, service traits for the daemon,
//! clients for callers, and the encoded descriptor set that server reflection serves.
//!
//! The `.proto` files under `proto/brainstem/v1/` are the public API. Other languages generate their own
//! stubs from the same files (the Python package in `client/python`, docs/CLIENTS.md).
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

/// What calling a method again does, as its proto declares it (`option idempotency_level`). The
/// daemon deduplicates keyed calls of [`Repeat::Changes`] methods; clients retry only the others (and
/// keyed calls). See ARCHITECTURE.md, "A mutating RPC honours idempotency-key".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// `NO_SIDE_EFFECTS`: a read.
    NoSideEffects,
    /// `IDEMPOTENT`: a repeat leaves the state as one call did.
    Idempotent,
    /// Declares nothing: a repeat would apply again.
    Changes,
    /// A client- or server-streaming method (never repeated as a whole).
    Streaming,
}

/// Every method of an encoded `FileDescriptorSet`, by full path (`/package.Service/Method`), with
/// its [`Repeat`]. A set that does not decode has no methods.
pub fn method_repeats(descriptor_set: &[u8]) -> Vec<(String, Repeat)> {
    use prost::Message;
    use prost_types::method_options::IdempotencyLevel;
    let Ok(set) = prost_types::FileDescriptorSet::decode(descriptor_set) else {
        return Vec::new();
    };
    let mut methods = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                let level = method
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                        o.idempotency_level()
                    });
                let repeat = if method.client_streaming() || method.server_streaming() {
                    Repeat::Streaming
                } else {
                    match level {
                        IdempotencyLevel::NoSideEffects => Repeat::NoSideEffects,
                        IdempotencyLevel::Idempotent => Repeat::Idempotent,
                        IdempotencyLevel::IdempotencyUnknown => Repeat::Changes,
                    }
                };
                methods.push((path, repeat));
            }
        }
    }
    methods
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
