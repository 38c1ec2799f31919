//! The tower layer every gRPC call passes through first. It settles the call's request id
//! (the client's `x-request-id`, else a new one, echoed on every response including
//! errors), runs the call inside a `tracing` span carrying the method and the request id
//! so that every log line of the request carries both, and counts the call and its
//! latency by method and final gRPC status.
//!
//! A gRPC response's final status travels in its trailers, or in its headers when the
//! response is trailers-only (most errors). The response body is wrapped so the trailers
//! are read as they go by; a response dropped before its trailers (the client went away,
//! the request timeout fired) is counted as `CANCELLED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::api;
use crate::metrics::Metrics;

/// Names of the gRPC status codes, by number.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const UNIMPLEMENTED: &str = "UNIMPLEMENTED";

fn grpc_status(headers: &http::HeaderMap) -> Option<&'static str> {
    let n: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(CODES.get(n).copied().unwrap_or("UNKNOWN"))
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (path.to_owned(), String::new()),
    }
}

/// Adds `Observe` around the gRPC routes.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Metrics,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<Observed<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let request_id = api::ensure_request_id(req.headers_mut());
        let (service, method) = split_path(req.uri().path());
        let span = tracing::info_span!(
            "rpc",
            method = %format_args!("{service}/{method}"),
            request_id = %request_id,
        );
        let mut outcome = Outcome {
            metrics: self.metrics.clone(),
            service,
            method,
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        // The instance that `poll_ready` prepared serves this call; a fresh clone takes
        // its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let mut resp = inner.call(req).await?;
                if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                    resp.headers_mut().entry(api::REQUEST_ID).or_insert(v);
                }
                if let Some(code) = grpc_status(resp.headers()) {
                    outcome.finish(code);
                }
                Ok(resp.map(|inner| Observed {
                    inner,
                    outcome: Some(outcome),
                }))
            }
            .instrument(span),
        )
    }
}

/// How one call ended; recorded exactly once (on drop at the latest).
struct Outcome {
    metrics: Metrics,
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Outcome {
    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        // A path the router does not know answers UNIMPLEMENTED; clients choose those
        // paths, so they share one label instead of minting a series each.
        let (service, method) = if code == UNIMPLEMENTED {
            ("unknown", "unknown")
        } else {
            (self.service.as_str(), self.method.as_str())
        };
        self.metrics.rpc(service, method, code, elapsed);
        self.span.in_scope(|| {
            tracing::debug!(
                code,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "rpc finished"
            );
        });
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A response body that reads the final status from the trailers as they pass.
pub struct Observed<B> {
    inner: B,
    outcome: Option<Outcome>,
}

impl<B> Body for Observed<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>, cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| grpc_status(t).unwrap_or("UNKNOWN")),
            Poll::Ready(Some(Err(_))) => Some("UNKNOWN"),
            // Ended without trailers: not a well-formed gRPC response.
            Poll::Ready(None) => Some("UNKNOWN"),
            Poll::Pending => None,
        };
        if let (Some(code), Some(outcome)) = (code, this.outcome.as_mut()) {
            outcome.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_codes_are_read() {
        assert_eq!(
            split_path("/piivault.v1.RecordService/PutFields"),
            ("piivault.v1.RecordService".into(), "PutFields".into())
        );
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&h), Some("NOT_FOUND"));
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(grpc_status(&h), Some("UNKNOWN"));
    }
}
