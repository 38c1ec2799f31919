//! Code generated from `proto/piivault/v1` by `build.rs`. Nothing hand-written here.

#![allow(clippy::all, missing_docs)]

/// The `piivault.v1` package.
pub mod v1 {
    tonic::include_proto!("piivault.v1");
}

/// Encoded descriptor set of every proto file, served by the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/piivault_descriptor.bin"));
