//! Connecting to a vault as a client over mutual TLS: used by the CLI and the tests.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::certs::DevPki;

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
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a host:port address")]
    BadAddress(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Opens a channel to `addr` (`host:port`), verifying the server against `certs.ca` and
/// presenting `certs.cert`.
pub async fn connect(addr: &str, certs: &ClientCerts) -> Result<Channel, ClientError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&certs.ca)?))
        .identity(Identity::from_pem(read(&certs.cert)?, read(&certs.key)?));
    let err = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    Channel::from_shared(format!("https://{addr}"))
        .map_err(|_| ClientError::BadAddress(addr.to_owned()))?
        .tls_config(tls)
        .map_err(err)?
        .connect()
        .await
        .map_err(err)
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
