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

/// The names gRPC gives its status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC status code `n` (`NOT_FOUND` for 5); `UNKNOWN` for a number gRPC does
/// not define.
pub fn code_name(n: i32) -> &'static str {
    usize::try_from(n)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Encoded descriptor set of every proto file, served by the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/piivault_descriptor.bin"));
