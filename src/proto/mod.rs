//! Code generated from `proto/piivault/v1` by `build.rs`, and the one hand-written piece it
//! is generated with: the codec (`codec.rs`) that answers a request message that does not
//! decode with INVALID_ARGUMENT.

#![allow(clippy::all, missing_docs)]

pub mod codec;

/// The `piivault.v1` package.
pub mod v1 {
    tonic::include_proto!("piivault.v1");
}

/// `google.rpc.ErrorInfo.domain` of every error the vault sends; the reasons are the
/// names of `v1::ErrorReason` (`proto/piivault/v1/errors.proto`).
pub const ERROR_DOMAIN: &str = "piivault.v1";

/// Encoded descriptor set of every proto file, served by the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/piivault_descriptor.bin"));
