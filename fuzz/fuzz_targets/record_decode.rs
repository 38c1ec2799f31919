//! Any bytes handed to the stored-record decoders either fail cleanly or give a record
//! that encodes back to exactly those bytes. A damaged data directory must never crash
//! the vault, and a record must have a single encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_vault::storage::{FieldRecord, SubjectRecord, TenantRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = TenantRecord::decode(data) {
        assert!(rec.encode() == data, "tenant record did not round-trip");
    }
    if let Ok(rec) = SubjectRecord::decode(data) {
        assert!(rec.encode() == data, "subject record did not round-trip");
    }
    if let Ok(rec) = FieldRecord::decode(data) {
        assert!(rec.encode() == data, "field record did not round-trip");
    }
});
