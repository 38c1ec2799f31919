//! `BackupService` handlers.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::proto::v1 as pb;
use crate::service::Vault;

use super::{call, respond};

/// Serves `piivault.v1.BackupService`.
#[derive(Debug, Clone)]
pub struct BackupApi {
    vault: Arc<Vault>,
}

impl BackupApi {
    pub fn new(vault: Arc<Vault>) -> Self {
        Self { vault }
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupApi {
    type BackupStream = ChunkStream;

    async fn backup(
        &self, req: Request<pb::BackupRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let call = call(&req)?;
        let chunks = self.vault.backup(&call).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks).map(|chunk| {
            chunk
                .map(|data| pb::BackupChunk { data })
                .map_err(Status::from)
        });
        let stream: ChunkStream = Box::pin(stream);
        Ok(respond(&call, stream))
    }
}
