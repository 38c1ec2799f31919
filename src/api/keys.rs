//! `KeyService` handlers. Every caller with a valid client certificate may call them for
//! now; admin-only authorization comes with the policy file.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::{InvalidInput, TenantId};
use crate::proto::v1 as pb;
use crate::service::{KeyStatus, Operation, TenantKeyStatus, Vault, VersionStatus};

use super::{call, convert, field, parsed, respond};

/// Serves `piivault.v1.KeyService`.
#[derive(Debug, Clone)]
pub struct KeyApi {
    vault: Arc<Vault>,
}

impl KeyApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

fn version(v: VersionStatus) -> pb::KeyVersion {
    pb::KeyVersion {
        version: v.version,
        created_at: v.created_at.map(convert::timestamp),
        destroyed_at: v.destroyed_at.map(convert::timestamp),
        current: v.current,
        encryptions: v.encryptions,
        wraps: v.wraps,
        retired_at: v.retired.map(|(at, _)| convert::timestamp(at)),
        destroyed_after: v.retired.map(|(_, until)| convert::timestamp(until)),
    }
}

fn tenant_status(t: TenantKeyStatus) -> pb::TenantKeyStatus {
    pb::TenantKeyStatus {
        tenant_id: t.tenant.to_string(),
        current_version: t.current,
        versions: t.versions.into_iter().map(version).collect(),
        rewrap: t.rewrap.map(|j| pb::RewrapProgress {
            target_version: j.target,
            started_at: Some(convert::timestamp(j.started_at)),
            subjects_scanned: j.scanned,
            subjects_rewrapped: j.rewrapped,
            subjects_total: j.total,
            passes: j.passes,
        }),
        shredded_at: t.shredded_at.map(convert::timestamp),
        subjects: t.subjects,
        epoch_pending: t.epoch_pending,
    }
}

fn status(s: KeyStatus) -> pb::KeyStatus {
    let run = s.epoch_run.as_ref();
    let failure = run.and_then(|r| r.last_failure.as_ref());
    pb::KeyStatus {
        root: Some(pb::RootKeyStatus {
            current_version: s.root.current,
            versions: s.root.versions.into_iter().map(version).collect(),
            rotation_pending: s.root.rotation_pending,
        }),
        tenants: s.tenants.into_iter().map(tenant_status).collect(),
        last_epoch: s.last_epoch.map(convert::timestamp),
        next_epoch: Some(convert::timestamp(s.next_epoch)),
        epoch_interval_seconds: s.epoch_interval.as_secs(),
        epoch_started: run.map(|r| convert::timestamp(r.started_at)),
        epoch_failures: run.map_or(0, |r| r.failures),
        last_epoch_failure: failure.map(|(at, _)| convert::timestamp(*at)),
        last_epoch_failure_reason: failure.map(|(_, why)| why.clone()).unwrap_or_default(),
        max_encryptions_per_dek: s.limits.dek,
        max_encryptions_per_wrapping_key: s.limits.wrapping,
    }
}

/// The optional tenant of a status request.
fn optional_tenant(id: &str) -> Result<Option<TenantId>, InvalidInput> {
    if id.is_empty() {
        Ok(None)
    } else {
        TenantId::parse(id).map(Some).map_err(field("tenant_id"))
    }
}

/// The tenant of a shred request, which must be confirmed by repeating its id.
fn confirmed_tenant(r: &pb::ShredTenantRequest) -> Result<TenantId, InvalidInput> {
    let id = TenantId::parse(&r.tenant_id).map_err(field("tenant_id"))?;
    if r.confirm_tenant_id != r.tenant_id {
        return Err(
            InvalidInput::new("confirm_tenant_id must repeat tenant_id to shred a tenant")
                .in_field("confirm_tenant_id"),
        );
    }
    Ok(id)
}

#[tonic::async_trait]
impl pb::key_service_server::KeyService for KeyApi {
    async fn rotate_tenant_key(
        &self, req: Request<pb::RotateTenantKeyRequest>,
    ) -> Result<Response<pb::RotateTenantKeyResponse>, Status> {
        let call = call(&req)?;
        let op = Operation::RotateTenantKey;
        let tenant = parsed(
            &self.vault,
            &call,
            op,
            TenantId::parse(&req.get_ref().tenant_id).map_err(field("tenant_id")),
        )
        .await?;
        let r = self.vault.rotate_tenant_key(&call, &tenant).await?;
        tracing::info!(%tenant, version = r.new_version, caller = %call.caller, request_id = %call.request_id, "tenant key rotation started");
        Ok(respond(
            &call,
            pb::RotateTenantKeyResponse {
                tenant_id: r.tenant.to_string(),
                previous_version: r.previous_version,
                new_version: r.new_version,
            },
        ))
    }

    async fn rotate_root_key(
        &self, req: Request<pb::RotateRootKeyRequest>,
    ) -> Result<Response<pb::RotateRootKeyResponse>, Status> {
        let call = call(&req)?;
        let r = self.vault.rotate_root_key(&call).await?;
        tracing::info!(version = r.current, caller = %call.caller, request_id = %call.request_id, "root key rotated");
        Ok(respond(
            &call,
            pb::RotateRootKeyResponse {
                current_version: r.current,
                destroyed_versions: r.destroyed,
                keys_rewrapped: r.rewrapped,
                retired_versions: r.retired,
            },
        ))
    }

    async fn get_key_status(
        &self, req: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatus>, Status> {
        let call = call(&req)?;
        let r = req.get_ref();
        let tenant = parsed(
            &self.vault,
            &call,
            Operation::KeyStatus,
            optional_tenant(&r.tenant_id),
        )
        .await?;
        let s = self
            .vault
            .key_status(&call, tenant.as_ref(), r.count_deks)
            .await?;
        Ok(respond(&call, status(s)))
    }

    async fn run_key_epoch(
        &self, req: Request<pb::RunKeyEpochRequest>,
    ) -> Result<Response<pb::RunKeyEpochResponse>, Status> {
        let call = call(&req)?;
        let r = self.vault.run_key_epoch(&call).await?;
        tracing::info!(tenants = r.tenants.len(), caller = %call.caller, request_id = %call.request_id, "key epoch run");
        let root = r.root;
        Ok(respond(
            &call,
            pb::RunKeyEpochResponse {
                tenants: r
                    .tenants
                    .into_iter()
                    .map(|(t, destroyed)| pb::EpochTenant {
                        tenant_id: t.to_string(),
                        destroyed_versions: destroyed,
                    })
                    .collect(),
                deks_rewrapped: r.deks_rewrapped,
                root_version: root.current,
                root_versions_destroyed: root.destroyed,
                root_versions_retired: root.retired,
                completed_at: Some(convert::timestamp(r.completed_at)),
                shredded_tenant_ids: r.shredded_tenants.iter().map(ToString::to_string).collect(),
            },
        ))
    }

    async fn shred_tenant(
        &self, req: Request<pb::ShredTenantRequest>,
    ) -> Result<Response<pb::ShredTenantResponse>, Status> {
        let call = call(&req)?;
        let tenant = parsed(
            &self.vault,
            &call,
            Operation::ShredTenant,
            confirmed_tenant(req.get_ref()),
        )
        .await?;
        let r = self.vault.shred_tenant(&call, &tenant).await?;
        tracing::warn!(%tenant, caller = %call.caller, request_id = %call.request_id, "tenant shredded");
        Ok(respond(
            &call,
            pb::ShredTenantResponse {
                tenant_id: r.tenant.to_string(),
                shredded_at: Some(convert::timestamp(r.shredded_at)),
                destroyed_versions: r.destroyed_versions,
            },
        ))
    }
}
