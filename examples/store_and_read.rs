//! A service that keeps its users' personal data in the vault instead of its own database:
//! it writes a user's fields, reads them back for a declared purpose, and handles the
//! vault's refusals by their reason.
//!
//!     PIIVAULT_ADDR=127.0.0.1:7443 PIIVAULT_DATA_DIR=./pii-vault-data \
//!         cargo run --release --example store_and_read -- demo user-1
//!
//! It prints field names, versions and how each value was rendered, never a value: a
//! service's logs are no place for the personal data it keeps in the vault.

use std::error::Error;
use std::io::Write;

use pii_vault::client::{ClientConfig, FieldWrite, Value, VaultClient};
use pii_vault::proto::v1::{Category, ErrorReason};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(ClientConfig::from_env()?, &args, &mut std::io::stdout()).await
}

/// The service's part, given its vault, its arguments and where to print (by `main`, the
/// environment's vault and stdout; by `tests/it/examples.rs`, a test vault and a buffer).
pub async fn run(
    config: ClientConfig, args: &[String], out: &mut impl Write,
) -> Result<(), Box<dyn Error>> {
    let tenant = args.first().map_or("demo", String::as_str);
    let subject = args.get(1).map_or("user-1", String::as_str);
    let vault = VaultClient::connect(&config).await?;

    // The tenant may exist already: that is fine.
    match vault.create_tenant(tenant).await {
        Ok(_) => writeln!(out, "created tenant {tenant}")?,
        Err(e) if e.reason() == Some(ErrorReason::TenantExists) => {}
        Err(e) => return Err(e.into()),
    }

    let versions = vault
        .put(
            tenant,
            subject,
            vec![
                FieldWrite::new(
                    "email",
                    Category::Account,
                    Value::Email("ada@example.com".into()),
                )
                .indexed(),
                FieldWrite::new(
                    "phone",
                    Category::Account,
                    Value::Phone("+44 20 7946 0958".into()),
                ),
                FieldWrite::new(
                    "bio",
                    Category::Profile,
                    Value::Text("Analytical engines".into()),
                ),
            ],
        )
        .await?;
    writeln!(out, "wrote 3 fields of {subject}: versions {versions:?}")?;

    for field in vault.get(tenant, subject, &[], "support").await? {
        writeln!(
            out,
            "read {} ({:?}) v{}: {:?}, {}",
            field.name,
            field.category,
            field.version,
            field.rendering,
            if field.value.is_some() {
                "value present"
            } else {
                "redacted"
            }
        )?;
    }

    // A subject the vault does not hold: the reason says so, whatever the message says.
    match vault.get(tenant, "nobody", &[], "support").await {
        Err(e) if e.reason() == Some(ErrorReason::SubjectNotFound) => {
            writeln!(out, "nobody: not held (SUBJECT_NOT_FOUND)")?;
        }
        Err(e) => return Err(e.into()),
        Ok(_) => return Err("a subject that was never written was found".into()),
    }
    Ok(())
}
