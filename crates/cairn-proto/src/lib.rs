//! Generated code for Cairn's gRPC API, package `cairn.v1` (see `proto/cairn/v1/`).
//!
//! Generated code only: conversions to and from the pipeline's types live in `cairn-server`, which is
//! the one crate that speaks gRPC. Nothing here has behaviour of its own.

#![allow(missing_debug_implementations)]

/// Messages and services of `cairn.v1`.
pub mod v1 {
    tonic::include_proto!("cairn.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cairn_descriptor");
