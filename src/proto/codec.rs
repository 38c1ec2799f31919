//! The codec of every vault service: prost's, except that a message that does not decode
//! (a `string` that is not UTF-8, a truncated field, a wrong wire type) is bad client input
//! and answers INVALID_ARGUMENT with a fixed message, where prost's codec answers INTERNAL
//! with the decoder's description. Chosen by `build.rs` (`codec_path`), so the status is
//! right where it is made and nothing downstream rewrites statuses by their text.

use std::collections::HashMap;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// What a request that does not decode is told; never the decoder's own words, which can
/// quote the offending bytes' position and type.
pub const UNDECODABLE: &str =
    "request message does not decode as its type (for example, a string that is not UTF-8)";

/// The INVALID_ARGUMENT of a message that does not decode, with its ErrorInfo
/// (MALFORMED_REQUEST).
fn undecodable() -> Status {
    let details = ErrorDetails::with_error_info(
        super::v1::ErrorReason::MalformedRequest.as_str_name(),
        super::ERROR_DOMAIN,
        HashMap::new(),
    );
    Status::with_error_details(Code::InvalidArgument, UNDECODABLE, details)
}

/// `ProstCodec` with decode failures answered INVALID_ARGUMENT.
#[derive(Debug)]
pub struct VaultCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for VaultCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for VaultCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = VaultDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        VaultDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// Decodes like `ProstDecoder`; a failure is INVALID_ARGUMENT.
#[derive(Debug)]
pub struct VaultDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default> Decoder for VaultDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(src).map_err(|_| undecodable())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
