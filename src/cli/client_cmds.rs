//! Client subcommands on tenants and records: tenant, put, get, delete, subjects, find,
//! tokenize, detokenize, reindex, policy.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pb::token_service_client::TokenServiceClient;
use pii_vault::domain::Category;
use pii_vault::proto::v1 as pb;

use super::output::{time, Out};
use super::{about, Connection};

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        /// Tenant id: 1 to 63 of `a-z`, `0-9`, `-`.
        tenant: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a tenant.
    Get {
        /// Tenant id.
        tenant: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List all tenants.
    List {
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// Tenant id.
    tenant: String,
    /// Subject id: the caller's own id of the person.
    subject: String,
    /// Fields as `name=value`.
    #[arg(required = true)]
    fields: Vec<String>,
    /// Category of every field given (account, profile, payment, ...).
    #[arg(long, default_value = "account")]
    category: String,
    /// Read each value as a file path and store its bytes.
    #[arg(long)]
    from_files: bool,
    /// Value kind of every field: text, email, phone, card_number, iban, date.
    #[arg(long, default_value = "text")]
    kind: String,
    /// Index the fields for `find` (email, phone and text only).
    #[arg(long)]
    indexed: bool,
    /// Write only if every field given is at this stored version (0: only if new);
    /// otherwise nothing is written and the vault answers VERSION_MISMATCH.
    #[arg(long, value_name = "VERSION")]
    expect_version: Option<u64>,
    /// Idempotency key (1 to 128 of `A-Za-z0-9._:-`): running the same put again with it
    /// within 24 hours writes nothing and prints the versions first written.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Tenant id.
    tenant: String,
    /// Subject id.
    subject: String,
    /// Field names; none reads every field.
    fields: Vec<String>,
    /// Why you are reading, such as `support` or `billing` (required; recorded in the
    /// audit log, and the policy's rules name the purposes they allow).
    #[arg(long)]
    purpose: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Tenant id.
    tenant: String,
    /// Subject id.
    subject: String,
    /// Names of the fields to delete.
    #[arg(required = true)]
    fields: Vec<String>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct SubjectsArgs {
    /// Tenant id.
    tenant: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// Tenant id.
    tenant: String,
    /// Name of the indexed field to search.
    field: String,
    /// The value to look for.
    value: String,
    /// The value's kind: email, phone or text (as it was stored).
    #[arg(long, default_value = "email")]
    kind: String,
    /// Why you are looking (recorded in the audit log).
    #[arg(long, default_value = "support")]
    purpose: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Tenant id.
    tenant: String,
    /// The subject (person) who holds the card: the token is erased with them.
    subject: String,
    /// The card number; `-` or nothing reads it from stdin (keeps it out of shell history).
    card_number: Option<String>,
    /// Idempotency key (1 to 128 of `A-Za-z0-9._:-`): the same number tokenized again with
    /// it within 24 hours gets the token first issued.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct DetokenizeArgs {
    /// Tenant id.
    tenant: String,
    /// The token, `tok_` and 32 hex digits.
    token: String,
    /// Why you need the number (recorded in the audit log).
    #[arg(long)]
    purpose: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// Tenant id.
    tenant: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Read the policy file again; a policy that does not parse is refused and the old one kept.
    Reload {
        #[command(flatten)]
        conn: Connection,
    },
}

fn tenant_json(t: &pb::Tenant) -> Value {
    json!({
        "tenant": t.tenant_id,
        "key_version": t.key_version,
        "created_at": time(t.created_at.as_ref()),
    })
}

const TENANT_COLUMNS: [&str; 3] = ["tenant", "key_version", "created_at"];

pub async fn tenant(cmd: TenantCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create { tenant, conn } => {
            about(Some(&tenant), None);
            let mut client = TenantServiceClient::new(conn.channel().await?);
            let t = client
                .create_tenant(pb::CreateTenantRequest { tenant_id: tenant })
                .await?
                .into_inner();
            out.table(&TENANT_COLUMNS, &[tenant_json(&t)]);
        }
        TenantCmd::Get { tenant, conn } => {
            about(Some(&tenant), None);
            let mut client = TenantServiceClient::new(conn.channel().await?);
            let t = client
                .get_tenant(pb::GetTenantRequest { tenant_id: tenant })
                .await?
                .into_inner();
            out.table(&TENANT_COLUMNS, &[tenant_json(&t)]);
        }
        TenantCmd::List { conn } => {
            let mut client = TenantServiceClient::new(conn.channel().await?);
            let mut page_token = String::new();
            let mut rows = Vec::new();
            loop {
                let page = client
                    .list_tenants(pb::ListTenantsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                rows.extend(page.tenants.iter().map(tenant_json));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.table(&TENANT_COLUMNS, &rows);
        }
    }
    Ok(())
}

fn category(name: &str) -> anyhow::Result<i32> {
    match Category::ALL.iter().find(|c| c.name() == name) {
        Some(c) => Ok(i32::from(c.code())),
        None => {
            let names: Vec<_> = Category::ALL.iter().map(|c| c.name()).collect();
            bail!("unknown category {name:?}; one of {}", names.join(", "))
        }
    }
}

/// A value of the kind named on the command line.
fn typed_value(kind: &str, v: String) -> anyhow::Result<pb::value::Kind> {
    use pb::value::Kind;
    Ok(match kind {
        "text" => Kind::Text(v),
        "email" => Kind::Email(v),
        "phone" => Kind::Phone(v),
        "card_number" => Kind::CardNumber(v),
        "iban" => Kind::Iban(v),
        "date" => Kind::Date(v),
        other => bail!(
            "unknown value kind {other:?}; one of text, email, phone, card_number, iban, date"
        ),
    })
}

pub async fn put(args: PutArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let category = category(&args.category)?;
    let fields = args
        .fields
        .iter()
        .map(|f| {
            let (name, value) = f.split_once('=').context("each field is name=value")?;
            let kind = if args.from_files {
                let path = PathBuf::from(value);
                pb::value::Kind::Bytes(
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                )
            } else {
                typed_value(&args.kind, value.to_owned())?
            };
            Ok(pb::FieldInput {
                expected_version: args.expect_version,
                indexed: args.indexed,
                ttl_seconds: 0,
                transaction_record: false,
                name: name.to_owned(),
                category,
                value: Some(pb::Value { kind: Some(kind) }),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = RecordServiceClient::new(args.conn.channel().await?);
    let written = client
        .put_fields(pb::PutFieldsRequest {
            tenant_id: args.tenant,
            subject_id: args.subject,
            fields,
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        })
        .await?
        .into_inner();
    let rows: Vec<Value> = written
        .fields
        .iter()
        .map(|f| json!({"field": f.name, "version": f.version}))
        .collect();
    out.table(&["field", "version"], &rows);
    Ok(())
}

/// A value as text: typed values as they are, bytes as hex.
fn shown(v: Option<pb::Value>) -> Value {
    use pb::value::Kind;
    match v.and_then(|v| v.kind) {
        Some(Kind::Bytes(b)) => Value::String(format!("0x{}", hex::encode(b))),
        Some(
            Kind::Text(s)
            | Kind::Email(s)
            | Kind::Phone(s)
            | Kind::CardNumber(s)
            | Kind::Iban(s)
            | Kind::Date(s),
        ) => Value::String(s),
        None => Value::Null,
    }
}

fn category_name(code: i32) -> &'static str {
    Category::from_code(i64::from(code)).map_or("?", Category::name)
}

fn rendering_name(code: i32) -> String {
    pb::Rendering::try_from(code)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("RENDERING_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "?".to_owned())
}

/// A field as JSON: its name, category, version, times, how it was rendered and its value.
pub(super) fn field_json(f: pb::Field) -> Value {
    json!({
        "field": f.name,
        "category": category_name(f.category),
        "version": f.version,
        "rendering": rendering_name(f.rendering),
        "created_at": time(f.created_at.as_ref()),
        "updated_at": time(f.updated_at.as_ref()),
        "value": shown(f.value),
    })
}

pub async fn get(args: GetArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let mut client = RecordServiceClient::new(args.conn.channel().await?);
    let got = client
        .get_fields(pb::GetFieldsRequest {
            tenant_id: args.tenant,
            subject_id: args.subject,
            field_names: args.fields,
            purpose: args.purpose,
        })
        .await?
        .into_inner();
    let rows: Vec<Value> = got.fields.into_iter().map(field_json).collect();
    out.table(
        &[
            "field",
            "category",
            "version",
            "updated_at",
            "rendering",
            "value",
        ],
        &rows,
    );
    Ok(())
}

pub async fn delete(args: DeleteArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let mut client = RecordServiceClient::new(args.conn.channel().await?);
    let deleted = client
        .delete_fields(pb::DeleteFieldsRequest {
            tenant_id: args.tenant,
            subject_id: args.subject,
            field_names: args.fields,
        })
        .await?
        .into_inner()
        .deleted;
    out.one(&json!({ "deleted": deleted }), || {
        format!("deleted {deleted}")
    });
    Ok(())
}

pub async fn subjects(args: SubjectsArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), None);
    let mut client = RecordServiceClient::new(args.conn.channel().await?);
    let mut page_token = String::new();
    loop {
        let page = client
            .list_subjects(pb::ListSubjectsRequest {
                tenant_id: args.tenant.clone(),
                page_size: 0,
                page_token,
            })
            .await?
            .into_inner();
        for s in &page.subject_ids {
            out.one(&json!({ "subject": s }), || s.clone());
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

pub async fn find(args: FindArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), None);
    let value = typed_value(&args.kind, args.value)?;
    let mut client = RecordServiceClient::new(args.conn.channel().await?);
    let found = client
        .find_subjects(pb::FindSubjectsRequest {
            tenant_id: args.tenant,
            field_name: args.field,
            value: Some(pb::Value { kind: Some(value) }),
            purpose: args.purpose,
        })
        .await?
        .into_inner();
    for s in &found.subject_ids {
        out.one(&json!({ "subject": s }), || s.clone());
    }
    Ok(())
}

pub async fn tokenize(args: TokenizeArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), Some(&args.subject));
    let card_number = match args.card_number.as_deref() {
        Some(n) if n != "-" => n.to_owned(),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the card number from stdin")?;
            text.trim().to_owned()
        }
    };
    let mut client = TokenServiceClient::new(args.conn.channel().await?);
    let t = client
        .tokenize(pb::TokenizeRequest {
            tenant_id: args.tenant,
            subject_id: args.subject,
            card_number,
            idempotency_key: args.idempotency_key.unwrap_or_default(),
        })
        .await?
        .into_inner();
    out.one(&json!({"token": t.token, "masked": t.masked}), || {
        format!("{}\t{}", t.token, t.masked)
    });
    Ok(())
}

pub async fn detokenize(args: DetokenizeArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), None);
    let mut client = TokenServiceClient::new(args.conn.channel().await?);
    let d = client
        .detokenize(pb::DetokenizeRequest {
            tenant_id: args.tenant,
            token: args.token,
            purpose: args.purpose,
        })
        .await?
        .into_inner();
    out.one(&json!({ "card_number": d.card_number }), || {
        d.card_number.clone()
    });
    Ok(())
}

pub async fn reindex(args: ReindexArgs, out: Out) -> anyhow::Result<()> {
    about(Some(&args.tenant), None);
    let mut client = RecordServiceClient::new(args.conn.long_channel().await?);
    let r = client
        .rotate_index_key(pb::RotateIndexKeyRequest {
            tenant_id: args.tenant.clone(),
        })
        .await?
        .into_inner();
    out.one(
        &json!({"tenant": args.tenant, "reindexed": r.reindexed}),
        || {
            format!(
                "tenant {}: new index key; {} indexed fields re-indexed",
                args.tenant, r.reindexed
            )
        },
    );
    Ok(())
}

pub async fn policy(cmd: PolicyCmd, out: Out) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Reload { conn } => {
            pb::admin_service_client::AdminServiceClient::new(conn.channel().await?)
                .reload_policy(pb::ReloadPolicyRequest {})
                .await?;
            out.one(&json!({ "reloaded": true }), || {
                "policy reloaded".to_owned()
            });
            Ok(())
        }
    }
}
