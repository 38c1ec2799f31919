//! A typed client of the vault, for services written in Rust: connect from a config or the
//! environment, call with typed inputs, get typed errors with the vault's reason decoded,
//! each call with a deadline, calls the vault did not act on retried with backoff.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pii_vault::client::{ClientConfig, FieldWrite, Value, VaultClient};
//! use pii_vault::proto::v1::Category;
//!
//! let vault = VaultClient::connect(&ClientConfig::from_env()?).await?;
//! vault
//!     .put("acme", "user-42", vec![FieldWrite::new("email", Category::Account, Value::Email("ada@example.com".into()))])
//!     .await?;
//! let fields = vault.get("acme", "user-42", &["email"], "support").await?;
//! # Ok(()) }
//! ```
//!
//! Retries: a call is tried again, up to `Retry::attempts` times in all, only when the
//! vault answered UNAVAILABLE or RESOURCE_EXHAUSTED and trying again cannot do a thing
//! twice. Reads, erasures, puts and tokenizations are retried on any of those: each put and
//! tokenization carries an idempotency key (a fresh one per call, or the caller's, by
//! `put_with_key` and `tokenize_with_key`), so a try the vault did do is answered, not done
//! again. Calls that would act twice (creating a tenant, key rotations) are retried only
//! when the vault's reason says it did nothing (RATE_LIMITED, KEYS_BUSY). The wait doubles
//! from `first_backoff` up to `max_backoff`, with jitter, and is never shorter than the
//! vault's RetryInfo. A deadline (`Timeouts::request`) bounds each attempt.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{connect_with, error_detail, ClientCerts, ClientError, ErrorDetail, Timeouts};
use crate::proto::v1 as pb;
use crate::proto::v1::ErrorReason;

/// How often and how patiently a call is retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Tries in all, the first included; 1 never retries.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// The wait before try `attempt + 1`: doubling from `first_backoff`, at most
    /// `max_backoff`, with up to a quarter of jitter, and never less than the vault asked.
    pub fn delay(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff);
        // Jitter from the process's random hash keys: no randomness crate needed for this.
        let spread = RandomState::new().build_hasher().finish() % 1000;
        let jitter = doubled / 4 * u32::try_from(spread).unwrap_or(0) / 1000;
        (doubled + jitter).max(asked.unwrap_or(Duration::ZERO))
    }
}

/// A new idempotency key: 32 hex digits, unique to this call. Only uniqueness matters (a
/// key is no secret, and a key that met another request would be refused, not misused),
/// so the process's random hash keys, a counter and the time give it.
fn fresh_key() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let half = |salt: u64| {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u64(n);
        h.write_u128(nanos);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// Where the vault is and how to reach it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` or `https://host[:port]`.
    pub addr: String,
    pub certs: ClientCerts,
    pub timeouts: Timeouts,
    pub retry: Retry,
}

impl ClientConfig {
    /// The vault at `addr`, presenting `certs`, with the default timeouts and retries.
    pub fn new(addr: impl Into<String>, certs: ClientCerts) -> Self {
        Self {
            addr: addr.into(),
            certs,
            timeouts: Timeouts::default(),
            retry: Retry::default(),
        }
    }

    /// From the variables the CLI reads: `PIIVAULT_ADDR` (default 127.0.0.1:7443),
    /// `PIIVAULT_CACERT`, `PIIVAULT_CLIENT_CERT` and `PIIVAULT_CLIENT_KEY` (default: the dev
    /// certificates under `PIIVAULT_DATA_DIR`, default `./pii-vault-data`),
    /// `PIIVAULT_CONNECT_TIMEOUT` and `PIIVAULT_TIMEOUT` (seconds).
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `from_env` over any source of variables.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let data_dir = PathBuf::from(
            var("PIIVAULT_DATA_DIR").unwrap_or_else(|| crate::config::DEFAULT_DATA_DIR.into()),
        );
        let dev = ClientCerts::dev(&data_dir);
        let path = |name: &str, default: PathBuf| var(name).map_or(default, PathBuf::from);
        let certs = ClientCerts {
            ca: path("PIIVAULT_CACERT", dev.ca),
            cert: path("PIIVAULT_CLIENT_CERT", dev.cert),
            key: path("PIIVAULT_CLIENT_KEY", dev.key),
        };
        let seconds = |name: &str| -> Result<Option<Duration>, ClientError> {
            var(name)
                .map(|v| {
                    v.parse::<f64>()
                        .ok()
                        .and_then(|s| Duration::try_from_secs_f64(s).ok())
                        .ok_or_else(|| {
                            ClientError::BadSetting(format!(
                                "{name}={v:?} is not a number of seconds"
                            ))
                        })
                })
                .transpose()
        };
        let mut timeouts = Timeouts::default();
        if let Some(t) = seconds("PIIVAULT_CONNECT_TIMEOUT")? {
            timeouts.connect = t;
        }
        if let Some(t) = seconds("PIIVAULT_TIMEOUT")? {
            timeouts.request = (!t.is_zero()).then_some(t);
        }
        let addr = var("PIIVAULT_ADDR").unwrap_or_else(|| crate::config::DEFAULT_LISTEN.into());
        Ok(Self {
            addr,
            certs,
            timeouts,
            retry: Retry::default(),
        })
    }
}

/// A failed call: the vault's status with its details decoded.
#[derive(Debug)]
pub struct VaultError {
    pub status: Status,
    pub detail: ErrorDetail,
    /// How many times the call was tried.
    pub attempts: u32,
}

impl VaultError {
    /// The vault's reason, when the status came from the vault (not from a broken
    /// connection or a client-side deadline).
    pub fn reason(&self) -> Option<ErrorReason> {
        self.detail.reason
    }

    pub fn code(&self) -> Code {
        self.status.code()
    }
}

impl fmt::Display for VaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = self.detail.reason.map_or("", |r| r.as_str_name());
        write!(f, "{:?}", self.status.code())?;
        if !reason.is_empty() {
            write!(f, " ({reason})")?;
        }
        write!(f, ": {}", self.status.message())
    }
}

impl std::error::Error for VaultError {}

/// A field value, typed. Its Debug output names the kind only, never the value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Bytes(Vec<u8>),
    Email(String),
    Phone(String),
    CardNumber(String),
    Iban(String),
    Date(String),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Email(_) => "email",
            Value::Phone(_) => "phone",
            Value::CardNumber(_) => "card_number",
            Value::Iban(_) => "iban",
            Value::Date(_) => "date",
        }
    }

    fn into_proto(self) -> pb::Value {
        use pb::value::Kind;
        let kind = match self {
            Value::Text(s) => Kind::Text(s),
            Value::Bytes(b) => Kind::Bytes(b),
            Value::Email(s) => Kind::Email(s),
            Value::Phone(s) => Kind::Phone(s),
            Value::CardNumber(s) => Kind::CardNumber(s),
            Value::Iban(s) => Kind::Iban(s),
            Value::Date(s) => Kind::Date(s),
        };
        pb::Value { kind: Some(kind) }
    }

    fn from_proto(v: pb::Value) -> Option<Self> {
        use pb::value::Kind;
        Some(match v.kind? {
            Kind::Text(s) => Value::Text(s),
            Kind::Bytes(b) => Value::Bytes(b),
            Kind::Email(s) => Value::Email(s),
            Kind::Phone(s) => Value::Phone(s),
            Kind::CardNumber(s) => Value::CardNumber(s),
            Kind::Iban(s) => Value::Iban(s),
            Kind::Date(s) => Value::Date(s),
        })
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value::{}(..)", self.kind())
    }
}

/// One field to write.
#[derive(Clone, Debug)]
pub struct FieldWrite {
    pub name: String,
    pub category: pb::Category,
    pub value: Value,
    /// Indexed for `find` (email, phone and text values only).
    pub indexed: bool,
    /// Deleted this long after the write, sooner than its category's retention.
    pub ttl: Option<Duration>,
    /// Written only if the stored version is this one (0: the field must not exist yet);
    /// otherwise the call fails with VERSION_MISMATCH and writes nothing.
    pub expected_version: Option<u64>,
}

impl FieldWrite {
    pub fn new(name: impl Into<String>, category: pb::Category, value: Value) -> Self {
        Self {
            name: name.into(),
            category,
            value,
            indexed: false,
            ttl: None,
            expected_version: None,
        }
    }

    /// The same field, written only over stored version `version` (0: only if new).
    pub fn if_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// The same field, indexed for `find`.
    pub fn indexed(mut self) -> Self {
        self.indexed = true;
        self
    }

    fn into_proto(self) -> pb::FieldInput {
        pb::FieldInput {
            name: self.name,
            category: self.category as i32,
            value: Some(self.value.into_proto()),
            indexed: self.indexed,
            ttl_seconds: self.ttl.map_or(0, |t| t.as_secs().max(1)),
            transaction_record: false,
            expected_version: self.expected_version,
        }
    }
}

/// A field as read: `value` is `None` when the caller's grant redacts it.
#[derive(Clone, Debug)]
pub struct FieldRead {
    pub name: String,
    pub category: pb::Category,
    pub version: u64,
    pub rendering: pb::Rendering,
    pub value: Option<Value>,
}

impl FieldRead {
    fn from_proto(f: pb::Field) -> Self {
        Self {
            category: pb::Category::try_from(f.category).unwrap_or(pb::Category::Unspecified),
            rendering: pb::Rendering::try_from(f.rendering).unwrap_or(pb::Rendering::Unspecified),
            value: f.value.and_then(Value::from_proto),
            version: f.version,
            name: f.name,
        }
    }
}

/// Whether trying a call again can do its work twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// Reads, erasures, and writes under an idempotency key: safe to retry on UNAVAILABLE.
    Safe,
    /// Retried only when the vault's reason says it did nothing.
    OnlyIfUndone,
}

fn retryable(repeat: Repeat, status: &Status, detail: &ErrorDetail) -> bool {
    let undone = matches!(
        detail.reason,
        Some(ErrorReason::RateLimited | ErrorReason::KeysBusy)
    );
    match status.code() {
        Code::Unavailable => repeat == Repeat::Safe || undone,
        Code::ResourceExhausted => undone,
        _ => false,
    }
}

/// A connection to a vault, cheap to clone (clones share the connection).
#[derive(Clone, Debug)]
pub struct VaultClient {
    channel: Channel,
    retry: Retry,
    deadline: Option<Duration>,
}

impl VaultClient {
    pub async fn connect(config: &ClientConfig) -> Result<Self, ClientError> {
        let channel = connect_with(&config.addr, &config.certs, config.timeouts).await?;
        Ok(Self {
            channel,
            retry: config.retry,
            deadline: config.timeouts.request,
        })
    }

    /// The channel, for the services this client has no method for.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(d) = self.deadline {
            request.set_timeout(d);
        }
        request
    }

    /// Runs `call` until it succeeds, fails for good, or runs out of tries.
    async fn call<T, F, Fut>(&self, repeat: Repeat, mut call: F) -> Result<T, VaultError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 1;
        loop {
            match call(self.channel.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let detail = error_detail(&status);
                    if attempt >= self.retry.attempts || !retryable(repeat, &status, &detail) {
                        return Err(VaultError {
                            status,
                            detail,
                            attempts: attempt,
                        });
                    }
                    tokio::time::sleep(self.retry.delay(attempt, detail.retry_after)).await;
                    attempt += 1;
                }
            }
        }
    }

    pub async fn create_tenant(&self, tenant: &str) -> Result<pb::Tenant, VaultError> {
        let message = pb::CreateTenantRequest {
            tenant_id: tenant.to_owned(),
        };
        self.call(Repeat::OnlyIfUndone, |c| {
            let req = self.request(message.clone());
            async move {
                pb::tenant_service_client::TenantServiceClient::new(c)
                    .create_tenant(req)
                    .await
            }
        })
        .await
    }

    /// Writes fields of a subject; returns each field's new version, in order. Retried
    /// under a fresh idempotency key, so a lost answer never writes twice.
    pub async fn put(
        &self, tenant: &str, subject: &str, fields: Vec<FieldWrite>,
    ) -> Result<Vec<u64>, VaultError> {
        self.put_with_key(tenant, subject, fields, &fresh_key())
            .await
    }

    /// `put` under the caller's idempotency key (1 to 128 of `A-Za-z0-9._:-`), for a
    /// caller that may send the same write again after it restarts: within 24 hours the
    /// vault answers it with the versions first written; another write under the key fails
    /// with IDEMPOTENCY_KEY_REUSED.
    pub async fn put_with_key(
        &self, tenant: &str, subject: &str, fields: Vec<FieldWrite>, idempotency_key: &str,
    ) -> Result<Vec<u64>, VaultError> {
        let message = pb::PutFieldsRequest {
            tenant_id: tenant.to_owned(),
            subject_id: subject.to_owned(),
            fields: fields.into_iter().map(FieldWrite::into_proto).collect(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let written = self
            .call(Repeat::Safe, |c| {
                let req = self.request(message.clone());
                async move {
                    pb::record_service_client::RecordServiceClient::new(c)
                        .put_fields(req)
                        .await
                }
            })
            .await?;
        Ok(written.fields.iter().map(|f| f.version).collect())
    }

    /// Reads fields of a subject (every field when `names` is empty) for `purpose`.
    pub async fn get(
        &self, tenant: &str, subject: &str, names: &[&str], purpose: &str,
    ) -> Result<Vec<FieldRead>, VaultError> {
        let message = pb::GetFieldsRequest {
            tenant_id: tenant.to_owned(),
            subject_id: subject.to_owned(),
            field_names: names.iter().map(|n| (*n).to_owned()).collect(),
            purpose: purpose.to_owned(),
        };
        let got = self
            .call(Repeat::Safe, |c| {
                let req = self.request(message.clone());
                async move {
                    pb::record_service_client::RecordServiceClient::new(c)
                        .get_fields(req)
                        .await
                }
            })
            .await?;
        Ok(got.fields.into_iter().map(FieldRead::from_proto).collect())
    }

    /// Erases a subject; erasing again returns the first receipt.
    pub async fn erase(
        &self, tenant: &str, subject: &str,
    ) -> Result<pb::ErasureReceipt, VaultError> {
        let message = pb::EraseSubjectRequest {
            tenant_id: tenant.to_owned(),
            subject_id: subject.to_owned(),
        };
        self.call(Repeat::Safe, |c| {
            let req = self.request(message.clone());
            async move {
                pb::subject_rights_service_client::SubjectRightsServiceClient::new(c)
                    .erase_subject(req)
                    .await
            }
        })
        .await
    }

    /// Tokenizes a card number of `subject` (the token is erased with them); returns the
    /// token. Retried under a fresh idempotency key, so a lost answer never issues a second
    /// token.
    pub async fn tokenize(
        &self, tenant: &str, subject: &str, card_number: &str,
    ) -> Result<String, VaultError> {
        self.tokenize_with_key(tenant, subject, card_number, &fresh_key())
            .await
    }

    /// `tokenize` under the caller's idempotency key: the same number under the same key
    /// within 24 hours gets the token first issued.
    pub async fn tokenize_with_key(
        &self, tenant: &str, subject: &str, card_number: &str, idempotency_key: &str,
    ) -> Result<String, VaultError> {
        let message = pb::TokenizeRequest {
            tenant_id: tenant.to_owned(),
            subject_id: subject.to_owned(),
            card_number: card_number.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let t = self
            .call(Repeat::Safe, |c| {
                let req = self.request(message.clone());
                async move {
                    pb::token_service_client::TokenServiceClient::new(c)
                        .tokenize(req)
                        .await
                }
            })
            .await?;
        Ok(t.token)
    }

    /// Key versions, usage and re-wrap progress of one tenant (or all, with `""`).
    pub async fn key_status(&self, tenant: &str) -> Result<pb::KeyStatus, VaultError> {
        let message = pb::GetKeyStatusRequest {
            tenant_id: tenant.to_owned(),
            count_deks: false,
        };
        self.call(Repeat::Safe, |c| {
            let req = self.request(message.clone());
            async move {
                pb::key_service_client::KeyServiceClient::new(c)
                    .get_key_status(req)
                    .await
            }
        })
        .await
    }

    /// Starts a rotation of a tenant's key; the re-wrap runs in the background
    /// (`key_status` shows it).
    pub async fn rotate_tenant_key(
        &self, tenant: &str,
    ) -> Result<pb::RotateTenantKeyResponse, VaultError> {
        let message = pb::RotateTenantKeyRequest {
            tenant_id: tenant.to_owned(),
        };
        self.call(Repeat::OnlyIfUndone, |c| {
            let req = self.request(message.clone());
            async move {
                pb::key_service_client::KeyServiceClient::new(c)
                    .rotate_tenant_key(req)
                    .await
            }
        })
        .await
    }

    /// Runs a key epoch now. Can take long: give the client a `Timeouts::request` of
    /// `None` (or a long one) for it.
    pub async fn run_key_epoch(&self) -> Result<pb::RunKeyEpochResponse, VaultError> {
        self.call(Repeat::OnlyIfUndone, |c| {
            let req = self.request(pb::RunKeyEpochRequest {});
            async move {
                pb::key_service_client::KeyServiceClient::new(c)
                    .run_key_epoch(req)
                    .await
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_honours_the_vaults_retry_info() {
        let retry = Retry {
            attempts: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let near = |d: Duration, base: u64| {
            d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 4)
        };
        assert!(near(retry.delay(1, None), 100));
        assert!(near(retry.delay(2, None), 200));
        assert!(near(retry.delay(3, None), 400));
        assert!(near(retry.delay(9, None), 1000), "capped");
        assert_eq!(
            retry.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn only_calls_that_cannot_act_twice_are_retried_on_any_unavailable() {
        let busy = ErrorDetail {
            reason: Some(ErrorReason::KeysBusy),
            ..ErrorDetail::default()
        };
        let store = ErrorDetail {
            reason: Some(ErrorReason::StorageUnavailable),
            ..ErrorDetail::default()
        };
        let unavailable = Status::unavailable("x");
        assert!(retryable(Repeat::Safe, &unavailable, &store));
        assert!(!retryable(Repeat::OnlyIfUndone, &unavailable, &store));
        assert!(retryable(Repeat::OnlyIfUndone, &unavailable, &busy));
        let not_found = Status::not_found("x");
        assert!(!retryable(
            Repeat::Safe,
            &not_found,
            &ErrorDetail::default()
        ));
    }

    #[test]
    fn values_stay_out_of_debug_output() {
        let f = FieldWrite::new(
            "email",
            pb::Category::Account,
            Value::Email("ada@example.com".into()),
        );
        let shown = format!("{f:?}");
        assert!(
            shown.contains("email") && !shown.contains("ada@"),
            "{shown}"
        );
    }

    #[test]
    fn the_environment_names_the_vault_its_certificates_and_timeouts() {
        let vars = |name: &str| {
            let value = match name {
                "PIIVAULT_ADDR" => "https://vault.internal:9000",
                "PIIVAULT_DATA_DIR" => "/srv/vault",
                "PIIVAULT_CLIENT_CERT" => "/etc/me.pem",
                "PIIVAULT_CLIENT_KEY" => "/etc/me.key",
                "PIIVAULT_TIMEOUT" => "2.5",
                _ => return None,
            };
            Some(value.to_owned())
        };
        let c = ClientConfig::from_lookup(vars).expect("config");
        assert_eq!(c.addr, "https://vault.internal:9000");
        assert_eq!(c.certs.ca, PathBuf::from("/srv/vault/tls/ca.pem"));
        assert_eq!(c.certs.cert, PathBuf::from("/etc/me.pem"));
        assert_eq!(c.timeouts.request, Some(Duration::from_millis(2500)));
        let bad = ClientConfig::from_lookup(|n| (n == "PIIVAULT_TIMEOUT").then(|| "soon".into()));
        assert!(bad.is_err());
    }
}
