//! Arbitrary bytes decoded as each request message of `piivault.v1`, as a peer could send
//! them. When prost accepts them, every string and enum the API validates goes through the
//! domain parsers, which must never panic, and the message must survive an encode/decode
//! round trip unchanged.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_vault::domain::{Category, FieldName, Purpose, SubjectId, TenantId};
use pii_vault::proto::v1 as pb;
use prost::Message;

/// Decodes `data` as `M`; if it decodes, checks the round trip and hands it to `check`.
fn decode<M: Message + Default + PartialEq>(data: &[u8], check: impl FnOnce(&M)) {
    let Ok(msg) = M::decode(data) else { return };
    let again = M::decode(msg.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(
        again == msg,
        "message changed in an encode/decode round trip"
    );
    check(&msg);
}

/// Page tokens are hex of an id (see `api::convert::page_token`): try the token as it
/// came and as the API reads it.
fn page_token(token: &str, parse: fn(&str) -> bool) {
    parse(token);
    if let Ok(bytes) = hex::decode(token) {
        if let Ok(text) = String::from_utf8(bytes) {
            parse(&text);
        }
    }
}

fn tenant(s: &str) -> bool {
    TenantId::parse(s).is_ok()
}

fn subject(s: &str) -> bool {
    SubjectId::parse(s).is_ok()
}

fn field_names(names: &[String]) {
    for name in names {
        let _ = FieldName::parse(name);
    }
}

fuzz_target!(|data: &[u8]| {
    decode(data, |m: &pb::PutFieldsRequest| {
        tenant(&m.tenant_id);
        subject(&m.subject_id);
        for f in &m.fields {
            let _ = FieldName::parse(&f.name);
            let _ = Category::from_code(i64::from(f.category));
        }
    });
    decode(data, |m: &pb::GetFieldsRequest| {
        tenant(&m.tenant_id);
        subject(&m.subject_id);
        field_names(&m.field_names);
        let _ = Purpose::parse(&m.purpose);
    });
    decode(data, |m: &pb::DeleteFieldsRequest| {
        tenant(&m.tenant_id);
        subject(&m.subject_id);
        field_names(&m.field_names);
    });
    decode(data, |m: &pb::ListSubjectsRequest| {
        tenant(&m.tenant_id);
        page_token(&m.page_token, subject);
    });
    decode(data, |m: &pb::CreateTenantRequest| {
        tenant(&m.tenant_id);
    });
    decode(data, |m: &pb::GetTenantRequest| {
        tenant(&m.tenant_id);
    });
    decode(data, |m: &pb::ListTenantsRequest| {
        page_token(&m.page_token, tenant);
    });
});
