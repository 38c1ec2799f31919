//! What a request to the vault does in each scenario, and the erase scenario's pool of
//! subjects to erase.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pb::record_service_client::RecordServiceClient;
use pb::subject_rights_service_client::SubjectRightsServiceClient;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;

use crate::drive::{outcome, Outcome, Target};
use crate::fixture::{field_input, FIELDS_PER_SUBJECT, TENANT};

/// What one request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `GetFields` of one 256-byte field.
    Get1,
    /// `GetFields` of ten 256-byte fields.
    Get10,
    /// `PutFields` of one field.
    Put1,
    /// `PutFields` of ten fields.
    Put10,
    /// 90% `Get1`, 10% `Put1`.
    Mixed,
    /// `EraseSubject` of a subject with one field, each request a different subject.
    Erase,
    /// One identity floods `GetFields` past its rate limit while another reads (`flood.rs`).
    Flood,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Get1,
        Scenario::Get10,
        Scenario::Put1,
        Scenario::Put10,
        Scenario::Mixed,
        Scenario::Erase,
        Scenario::Flood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Get1 => "get1",
            Scenario::Get10 => "get10",
            Scenario::Put1 => "put1",
            Scenario::Put10 => "put10",
            Scenario::Mixed => "mixed90/10",
            Scenario::Erase => "erase",
            Scenario::Flood => "flood",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sc| sc.name().starts_with(s))
    }

    /// Fields a request reads or writes (the baselines are sized by it).
    pub fn fields(self) -> usize {
        match self {
            Scenario::Get10 | Scenario::Put10 => 10,
            _ => 1,
        }
    }

    pub fn is_put(self) -> bool {
        matches!(self, Scenario::Put1 | Scenario::Put10)
    }

    pub fn is_get(self) -> bool {
        matches!(self, Scenario::Get1 | Scenario::Get10)
    }

    /// Whether the scenario runs against the shared, preloaded vaults in the throughput table
    /// (erasure and the flood have runs of their own).
    pub fn is_throughput(self) -> bool {
        !matches!(self, Scenario::Erase | Scenario::Flood)
    }
}

/// The `GetFields` request of request `n`: `fields` fields of one preloaded subject.
pub fn get_request(n: u64, subjects: usize, fields: usize) -> pb::GetFieldsRequest {
    pb::GetFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: format!("s{}", n as usize % subjects),
        field_names: (0..fields).map(|f| format!("f{f}")).collect(),
        purpose: "benchmark".into(),
    }
}

fn put_request(n: u64, subjects: usize, fields: usize) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        tenant_id: TENANT.into(),
        subject_id: format!("s{}", n as usize % subjects),
        fields: (0..fields)
            .map(|f| field_input(&format!("f{f}"), n as usize))
            .collect(),
        idempotency_key: String::new(),
    }
}

/// Reads and writes of the preloaded subjects.
#[derive(Clone)]
pub struct VaultTarget {
    pub client: RecordServiceClient<Channel>,
    pub scenario: Scenario,
    pub subjects: usize,
}

impl Target for VaultTarget {
    async fn call(&mut self, n: u64) -> Outcome {
        let subjects = self.subjects;
        let client = &mut self.client;
        match self.scenario {
            Scenario::Get1 => outcome(client.get_fields(get_request(n, subjects, 1)).await),
            Scenario::Get10 => {
                let request = get_request(n, subjects, FIELDS_PER_SUBJECT);
                outcome(client.get_fields(request).await)
            }
            Scenario::Put1 => outcome(client.put_fields(put_request(n, subjects, 1)).await),
            Scenario::Put10 => {
                let request = put_request(n, subjects, FIELDS_PER_SUBJECT);
                outcome(client.put_fields(request).await)
            }
            Scenario::Mixed if n.is_multiple_of(10) => {
                outcome(client.put_fields(put_request(n, subjects, 1)).await)
            }
            Scenario::Mixed => outcome(client.get_fields(get_request(n, subjects, 1)).await),
            // Erasure has its own target, with a pool of subjects to erase; the flood its own
            // vault and clients.
            Scenario::Erase | Scenario::Flood => Outcome::Failed,
        }
    }
}

/// Erases subjects `{prefix}0 .. {prefix}{pool}`, each once, whichever stream gets to it.
#[derive(Clone)]
pub struct EraseTarget {
    pub client: SubjectRightsServiceClient<Channel>,
    pub prefix: String,
    pub next: Arc<AtomicU64>,
    pub pool: u64,
}

impl Target for EraseTarget {
    async fn call(&mut self, _n: u64) -> Outcome {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if k >= self.pool {
            return Outcome::Exhausted;
        }
        let request = pb::EraseSubjectRequest {
            tenant_id: TENANT.into(),
            subject_id: format!("{}{k}", self.prefix),
        };
        outcome(self.client.erase_subject(request).await)
    }
}

/// Gives subjects `{prefix}0 .. {prefix}{pool}` one field each, over 8 streams.
pub async fn seed_erase_pool(channel: &Channel, prefix: &str, pool: u64) {
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let mut client = RecordServiceClient::new(channel.clone());
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                for k in (w..pool).step_by(8) {
                    client
                        .put_fields(pb::PutFieldsRequest {
                            tenant_id: TENANT.into(),
                            subject_id: format!("{prefix}{k}"),
                            fields: vec![field_input("f0", k as usize)],
                            idempotency_key: String::new(),
                        })
                        .await
                        .expect("seed a subject to erase");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("seed task");
    }
}
