//! Protobuf ⇄ domain conversions. Parsing here is where untrusted input becomes typed.

use crate::domain::{
    Category, Field, FieldMeta, FieldName, FieldValue, InvalidInput, NewField, Render, Tenant,
    Timestamp,
};
use crate::proto::v1 as pb;

/// Field names a caller reads or writes: never a card token's.
pub fn field_names(names: &[String]) -> Result<Vec<FieldName>, InvalidInput> {
    parse_names(names, FieldName::parse_external)
}

/// Field names a caller deletes: a card token's name (`tok_…`, or a card-shaped token's 16
/// digits) deletes the token.
pub fn deleted_names(names: &[String]) -> Result<Vec<FieldName>, InvalidInput> {
    parse_names(names, crate::service::token_field)
}

fn parse_names(
    names: &[String], parse: fn(&str) -> Result<FieldName, InvalidInput>,
) -> Result<Vec<FieldName>, InvalidInput> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| parse(n).map_err(|e| e.context(format!("field_names[{i}]"))))
        .collect()
}

/// A protobuf time as vault time; times before 1970 are malformed.
pub fn from_timestamp(t: &prost_types::Timestamp) -> Result<Timestamp, InvalidInput> {
    let secs = u64::try_from(t.seconds).map_err(|_| InvalidInput::new("time is before 1970"))?;
    let micros =
        u64::try_from(t.nanos / 1000).map_err(|_| InvalidInput::new("time has negative nanos"))?;
    Ok(Timestamp(
        secs.saturating_mul(1_000_000).saturating_add(micros),
    ))
}

pub fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = t.seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

/// A value from the wire, validated and normalised by its kind.
pub fn field_value(v: Option<pb::Value>) -> Result<FieldValue, InvalidInput> {
    use pb::value::Kind;
    Ok(match v.and_then(|v| v.kind) {
        Some(Kind::Text(s)) => FieldValue::Text(s),
        Some(Kind::Bytes(b)) => FieldValue::Bytes(b),
        Some(Kind::Email(s)) => FieldValue::typed(3, &s)?,
        Some(Kind::Phone(s)) => FieldValue::typed(4, &s)?,
        Some(Kind::CardNumber(s)) => FieldValue::typed(5, &s)?,
        Some(Kind::Iban(s)) => FieldValue::typed(6, &s)?,
        Some(Kind::Date(s)) => FieldValue::typed(7, &s)?,
        None => return Err(InvalidInput::new("value is missing")),
    })
}

fn new_field(f: pb::FieldInput) -> Result<NewField, InvalidInput> {
    let name = FieldName::parse_external(&f.name).map_err(|e| e.in_field("name"))?;
    if f.category == pb::Category::Unspecified as i32 {
        return Err(InvalidInput::new("category is missing").in_field("category"));
    }
    let category =
        Category::from_code(i64::from(f.category)).map_err(|e| e.in_field("category"))?;
    let value = field_value(f.value).map_err(|e| e.in_field("value"))?;
    if f.transaction_record && category != Category::Payment {
        return Err(
            InvalidInput::new("only payment fields can be transaction records")
                .in_field("transaction_record"),
        );
    }
    Ok(NewField {
        name,
        category,
        value,
        indexed: f.indexed,
        transaction_record: f.transaction_record,
        expected_version: f.expected_version,
        ttl: (f.ttl_seconds > 0).then(|| std::time::Duration::from_secs(f.ttl_seconds)),
    })
}

pub fn new_fields(fields: Vec<pb::FieldInput>) -> Result<Vec<NewField>, InvalidInput> {
    fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| new_field(f).map_err(|e| e.context(format!("fields[{i}]"))))
        .collect()
}

pub fn category(c: Category) -> pb::Category {
    pb::Category::try_from(i32::from(c.code())).unwrap_or(pb::Category::Unspecified)
}

/// A value on the wire, in its own kind.
pub fn value(v: FieldValue) -> pb::Value {
    use pb::value::Kind;
    pb::Value {
        kind: Some(match v {
            FieldValue::Text(s) => Kind::Text(s),
            FieldValue::Bytes(b) => Kind::Bytes(b),
            FieldValue::Email(s) => Kind::Email(s),
            FieldValue::Phone(s) => Kind::Phone(s),
            FieldValue::CardNumber(s) => Kind::CardNumber(s),
            FieldValue::Iban(s) => Kind::Iban(s),
            FieldValue::Date(s) => Kind::Date(s),
        }),
    }
}

fn rendering(r: Render) -> pb::Rendering {
    match r {
        Render::Redacted => pb::Rendering::Redacted,
        Render::Masked => pb::Rendering::Masked,
        Render::Whole => pb::Rendering::Whole,
        Render::Reveal => pb::Rendering::Revealed,
    }
}

pub fn field(f: Field) -> pb::Field {
    let Field {
        meta,
        value: v,
        render,
    } = f;
    pb::Field {
        name: meta.name.as_str().to_owned(),
        category: category(meta.category) as i32,
        value: v.map(value),
        rendering: rendering(render) as i32,
        version: meta.version,
        created_at: Some(timestamp(meta.created_at)),
        updated_at: Some(timestamp(meta.updated_at)),
    }
}

pub fn written(m: FieldMeta) -> pb::FieldWritten {
    pb::FieldWritten {
        name: m.name.as_str().to_owned(),
        version: m.version,
    }
}

pub fn tenant(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.as_str().to_owned(),
        created_at: Some(timestamp(t.created_at)),
        key_version: t.key_version,
    }
}

/// Page tokens are the hex of the last id of the previous page: opaque to callers, and
/// never a place where a raw id is echoed back in an error.
pub fn page_token<T>(
    token: &str, parse: fn(&str) -> Result<T, InvalidInput>,
) -> Result<Option<T>, InvalidInput> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad =
        || InvalidInput::new("page_token is not a token this server issued").in_field("page_token");
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    parse(&text).map(Some).map_err(|_| bad())
}

pub fn next_token(id: Option<&str>) -> String {
    id.map(hex::encode).unwrap_or_default()
}
