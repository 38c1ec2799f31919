//! Client subcommands: tenant, put, get, delete, subjects.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

use pb::record_service_client::RecordServiceClient;
use pb::tenant_service_client::TenantServiceClient;
use pii_vault::client::{connect, ClientCerts};
use pii_vault::domain::Category;
use pii_vault::proto::v1 as pb;

use super::Connection;

impl Connection {
    pub(super) async fn channel(&self) -> anyhow::Result<Channel> {
        let dev = ClientCerts::dev(&self.data_dir);
        let certs = ClientCerts {
            ca: self.ca.clone().unwrap_or(dev.ca),
            cert: self.cert.clone().unwrap_or(dev.cert),
            key: self.key.clone().unwrap_or(dev.key),
        };
        Ok(connect(&self.addr, &certs).await?)
    }
}

#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        tenant: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show a tenant.
    Get {
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
    tenant: String,
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
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    tenant: String,
    subject: String,
    /// Field names; none reads every field.
    fields: Vec<String>,
    /// Why you are reading (recorded in the audit log).
    #[arg(long, default_value = "support")]
    purpose: String,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    tenant: String,
    subject: String,
    #[arg(required = true)]
    fields: Vec<String>,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Debug, Args)]
pub struct SubjectsArgs {
    tenant: String,
    #[command(flatten)]
    conn: Connection,
}

fn show_tenant(t: &pb::Tenant) {
    let created = t.created_at.as_ref().map_or(0, |c| c.seconds);
    println!("{}\tkey v{}\tcreated {created}", t.tenant_id, t.key_version);
}

pub async fn tenant(cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create { tenant, conn } => {
            let mut client = TenantServiceClient::new(conn.channel().await?);
            let t = client
                .create_tenant(pb::CreateTenantRequest { tenant_id: tenant })
                .await?
                .into_inner();
            show_tenant(&t);
        }
        TenantCmd::Get { tenant, conn } => {
            let mut client = TenantServiceClient::new(conn.channel().await?);
            show_tenant(
                &client
                    .get_tenant(pb::GetTenantRequest { tenant_id: tenant })
                    .await?
                    .into_inner(),
            );
        }
        TenantCmd::List { conn } => {
            let mut client = TenantServiceClient::new(conn.channel().await?);
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_tenants(pb::ListTenantsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                page.tenants.iter().for_each(show_tenant);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
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

pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let category = category(&args.category)?;
    let fields = args
        .fields
        .iter()
        .map(|f| {
            let (name, value) = f.split_once('=').context("each field is name=value")?;
            let kind = if args.from_files {
                let path = PathBuf::from(value);
                pb::value::Kind::Bytes(
                    std::fs::read(&path).with_context(|| format!("{}", path.display()))?,
                )
            } else {
                let v = value.to_owned();
                match args.kind.as_str() {
                    "text" => pb::value::Kind::Text(v),
                    "email" => pb::value::Kind::Email(v),
                    "phone" => pb::value::Kind::Phone(v),
                    "card_number" => pb::value::Kind::CardNumber(v),
                    "iban" => pb::value::Kind::Iban(v),
                    "date" => pb::value::Kind::Date(v),
                    other => bail!("unknown value kind {other:?}"),
                }
            };
            Ok(pb::FieldInput {
                indexed: false,
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
        })
        .await?
        .into_inner();
    for f in written.fields {
        println!("{}\tv{}", f.name, f.version);
    }
    Ok(())
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
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
    for f in got.fields {
        use pb::value::Kind;
        let value = match f.value.and_then(|v| v.kind) {
            Some(Kind::Bytes(b)) => format!("0x{}", hex::encode(b)),
            Some(
                Kind::Text(s)
                | Kind::Email(s)
                | Kind::Phone(s)
                | Kind::CardNumber(s)
                | Kind::Iban(s)
                | Kind::Date(s),
            ) => s,
            None => "[redacted]".to_owned(),
        };
        let cat = Category::from_code(i64::from(f.category)).map_or("?", Category::name);
        println!("{}\t{cat}\tv{}\t{value}", f.name, f.version);
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
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
    println!("deleted {deleted}");
    Ok(())
}

pub async fn subjects(args: SubjectsArgs) -> anyhow::Result<()> {
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
            println!("{s}");
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}
