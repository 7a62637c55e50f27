//! Generated code for the `brainstem.v1` protobuf package: messages, service traits for the daemon,
//! clients for callers, and the encoded descriptor set that server reflection serves.
//!
//! The `.proto` files under `proto/brainstem/v1/` are the public API. Other languages generate their own
//! stubs from the same files (see the README for Python).

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("brainstem.v1");

    /// Encoded `FileDescriptorSet` of every `brainstem.v1` file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("brainstem_v1_descriptor");
}
