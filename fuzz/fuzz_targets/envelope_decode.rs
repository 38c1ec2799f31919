//! Any bytes handed to `Sealed::decode` either fail cleanly or give an envelope that
//! encodes back to exactly those bytes: the on-disk form has one encoding per envelope.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_vault::crypto::Sealed;

fuzz_target!(|data: &[u8]| {
    if let Ok(sealed) = Sealed::decode(data) {
        assert!(sealed.encode() == data, "envelope did not round-trip");
    }
});
