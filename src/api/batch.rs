//! The batch calls (BatchPutFields, BatchGetFields, EraseSubjects): a stream of requests,
//! each handled exactly as the call of its own would be (its own authorization, audit event
//! and answer), up to `IN_FLIGHT` at once, and a stream of results that say by `index`
//! which request each answers. One item failing does not stop the others.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status, Streaming};
use tonic_types::StatusExt;

use crate::proto::v1 as pb;

/// Items of one stream handled at once: enough for the audit log's group commit to share
/// its flushes among them, few enough that one stream cannot crowd out every other caller.
pub const IN_FLIGHT: usize = 32;

/// The response stream of a batch call.
pub type Results<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One item's failure, as its own call would have failed.
pub fn item_error(status: &Status) -> pb::ItemError {
    let details = status.get_error_details();
    let info = details.error_info();
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason: info.map(|i| i.reason.clone()).unwrap_or_default(),
        metadata: info.map(|i| i.metadata.clone()).unwrap_or_default(),
    }
}

/// Reads `inbound`, runs `one(index, request)` for up to `IN_FLIGHT` requests at once and
/// streams each result as it is done. The stream ends after the last result once the
/// client's side ended, with the error of a request that does not decode (the items
/// already running still answer first), or when the client goes away (what runs is left to
/// finish: cancelling a write midway is not for a disconnect to decide).
pub fn run<Req, Resp, F, Fut>(mut inbound: Streaming<Req>, one: F) -> Results<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(u64, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        let mut running = tokio::task::JoinSet::new();
        let mut index = 0u64;
        let mut reading = true;
        while reading || !running.is_empty() {
            let room = reading && running.len() < IN_FLIGHT;
            let sent = tokio::select! {
                next = inbound.message(), if room => match next {
                    Ok(Some(request)) => {
                        running.spawn(one(index, request));
                        index += 1;
                        Ok(())
                    }
                    Ok(None) => {
                        reading = false;
                        Ok(())
                    }
                    Err(status) => {
                        reading = false;
                        tx.send(Err(status)).await
                    }
                },
                Some(done) = running.join_next(), if !running.is_empty() => match done {
                    Ok(result) => tx.send(Ok(result)).await,
                    Err(e) => {
                        tracing::error!(error = %e, "a batch item's task failed");
                        tx.send(Err(Status::internal("internal error"))).await
                    }
                },
            };
            if sent.is_err() {
                running.detach_all();
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
