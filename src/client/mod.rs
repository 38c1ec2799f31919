//! Connecting to a vault as a client over mutual TLS (used by the CLI, the tests and the
//! examples), decoding the error details its statuses carry, and a typed client with
//! deadlines and retries (`VaultClient`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_types::StatusExt;

mod vault;

pub use vault::{ClientConfig, FieldRead, FieldWrite, Retry, Value, VaultClient, VaultError};

use crate::certs::DevPki;
use crate::proto::v1::ErrorReason;

/// The certificate files a client presents and trusts.
#[derive(Clone, Debug)]
pub struct ClientCerts {
    /// CA the server certificate must chain to.
    pub ca: PathBuf,
    /// The client's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCerts {
    /// The dev client certificate that `serve` creates in `<data_dir>/tls`.
    pub fn dev(data_dir: &Path) -> Self {
        let pki = DevPki::in_dir(&data_dir.join("tls"));
        Self {
            ca: pki.ca_cert,
            cert: pki.client_cert,
            key: pki.client_key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A certificate or key file could not be read; the cause is chained (`source`).
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    BadAddress(String),
    /// A setting (an environment variable) that does not parse.
    #[error("{0}")]
    BadSetting(String),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection (TCP, TLS and HTTP/2 set up) within the connect timeout.
    #[error("no connection to {addr} within {} s", .after.as_secs_f64())]
    ConnectTimeout { addr: String, after: Duration },
}

/// The port a vault address without one means: `serve`'s default.
pub const DEFAULT_PORT: u16 = 7443;

/// The `host:port` of a vault address given as `host:port`, `host`, `https://host[:port]`
/// or `https://host[:port]/`. `http://` is refused: the vault serves mutual TLS only.
pub fn parse_addr(addr: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::BadAddress(format!("address {addr:?} {why}"));
    let rest =
        match addr.split_once("://") {
            Some(("https", rest)) => rest,
            Some(("http", _)) => return Err(bad(
                "is plaintext HTTP; the vault serves mutual TLS only: use https:// or host:port",
            )),
            Some(_) => return Err(bad("has a scheme other than https://")),
            None => addr,
        };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad("is not host:port or https://host:port"));
    }
    // An IPv6 literal is bracketed; its colons are not the port's.
    let has_port = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => {
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad("has no valid host and port"));
            }
            true
        }
        _ => false,
    };
    Ok(if has_port {
        rest.to_owned()
    } else {
        format!("{rest}:{DEFAULT_PORT}")
    })
}

/// How long a client waits: for the connection, and for each call's answer.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP connect, TLS handshake and HTTP/2 set-up together.
    pub connect: Duration,
    /// Each call, until its answer (or a streaming call's first message) arrives; `None`
    /// waits as long as the server takes.
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            request: Some(Duration::from_secs(30)),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Opens a channel to `addr` (`host:port`), verifying the server against `certs.ca` and
/// presenting `certs.cert`, with the default timeouts.
pub async fn connect(addr: &str, certs: &ClientCerts) -> Result<Channel, ClientError> {
    connect_with(addr, certs, Timeouts::default()).await
}

/// `connect` with the given timeouts; `addr` may be any form `parse_addr` takes.
pub async fn connect_with(
    addr: &str, certs: &ClientCerts, timeouts: Timeouts,
) -> Result<Channel, ClientError> {
    let addr = parse_addr(addr)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&certs.ca)?))
        .identity(Identity::from_pem(read(&certs.cert)?, read(&certs.key)?));
    let err = |source| ClientError::Connect {
        addr: addr.clone(),
        source,
    };
    let mut endpoint = Channel::from_shared(format!("https://{addr}"))
        .map_err(|_| ClientError::BadAddress(format!("address {addr:?} is not host:port")))?
        .tls_config(tls)
        .map_err(err)?
        .connect_timeout(timeouts.connect);
    if let Some(limit) = timeouts.request {
        endpoint = endpoint.timeout(limit);
    }
    // The whole set-up is bounded: a server that accepts TCP and then says nothing (no TLS
    // handshake) must not hang the client.
    match tokio::time::timeout(timeouts.connect, endpoint.connect()).await {
        Ok(channel) => channel.map_err(err),
        Err(_) => Err(ClientError::ConnectTimeout {
            addr,
            after: timeouts.connect,
        }),
    }
}

/// What an error status of the vault says for programs: the `google.rpc.ErrorInfo`
/// reason and metadata, the `BadRequest` field paths and the `RetryInfo` delay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The reason, when the status carries the vault's ErrorInfo; `None` for statuses the
    /// vault did not make (a transport failure, a client-side timeout, a proxy).
    pub reason: Option<ErrorReason>,
    /// ErrorInfo metadata: ids and names only (`receipt_id`, `field`, `purpose`).
    pub metadata: HashMap<String, String>,
    /// Request fields that were wrong (`fields[1].value`).
    pub fields: Vec<String>,
    /// How long to wait before retrying.
    pub retry_after: Option<Duration>,
}

/// Decodes the details the vault attaches to an error status.
pub fn error_detail(status: &tonic::Status) -> ErrorDetail {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .filter(|i| i.domain == crate::proto::ERROR_DOMAIN);
    ErrorDetail {
        reason: info.and_then(|i| ErrorReason::from_str_name(&i.reason)),
        metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
        fields: details
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
            .unwrap_or_default(),
        retry_after: details.retry_info().and_then(|r| r.retry_delay),
    }
}

/// What the vault's gRPC health service says of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Serving,
    NotServing,
    /// Any other answer (unknown service, or a status this version does not know).
    Unknown,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Unknown => "UNKNOWN",
        }
    }
}

/// Asks the vault's gRPC health service about `service` (`""`: the vault as a whole).
pub async fn health(channel: Channel, service: &str) -> Result<Health, tonic::Status> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(match ServingStatus::try_from(answer.into_inner().status) {
        Ok(ServingStatus::Serving) => Health::Serving,
        Ok(ServingStatus::NotServing) => Health::NotServing,
        _ => Health::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_the_forms_operators_write() {
        for (given, meant) in [
            ("127.0.0.1:7443", "127.0.0.1:7443"),
            ("vault.internal:9000", "vault.internal:9000"),
            ("https://vault.internal:9000", "vault.internal:9000"),
            ("https://vault.internal:9000/", "vault.internal:9000"),
            ("https://vault.internal", "vault.internal:7443"),
            ("vault.internal", "vault.internal:7443"),
            ("[::1]:7443", "[::1]:7443"),
            ("https://[::1]", "[::1]:7443"),
        ] {
            assert_eq!(parse_addr(given).expect(given), meant, "{given}");
        }
        for (given, says) in [
            ("http://vault:7443", "mutual TLS only"),
            ("grpc://vault:7443", "other than https"),
            ("https://vault:7443/v1", "not host:port"),
            ("vault:port", "no valid host and port"),
            (":7443", "no valid host and port"),
            ("", "not host:port"),
        ] {
            let err = parse_addr(given).expect_err(given).to_string();
            assert!(err.contains(says), "{given}: {err}");
        }
    }
}
