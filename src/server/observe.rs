//! The tower layer every gRPC call passes through first. It settles the call's request id
//! (the client's `x-request-id`, else a new one, echoed on every response including
//! errors), runs the call inside a `tracing` span carrying the method and the request id
//! so that every log line of the request carries both, and counts the call and its
//! latency by method and final gRPC status.
//!
//! With `[observability] trace_propagation` on, a valid W3C trace context `traceparent`
//! header adds its trace id and parent span id to the span, so the vault's logs can be
//! joined to the caller's trace. The header is the client's word: it is used for nothing
//! else (not the request id, not the audit event, not a metric label), and one that does
//! not follow the specification exactly is ignored.
//!
//! A gRPC response's final status travels in its trailers, or in its headers when the
//! response is trailers-only (most errors). The response body is wrapped so the trailers
//! are read as they go by; a response dropped before its trailers (the client went away)
//! is counted as `CANCELLED`. A request past its deadline is answered `DEADLINE_EXCEEDED`
//! by `deadline.rs`, inside this layer, and counted so.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::api;
use crate::metrics::Metrics;

const UNIMPLEMENTED: &str = "UNIMPLEMENTED";

fn grpc_status(headers: &http::HeaderMap) -> Option<&'static str> {
    let n: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(crate::proto::code_name(n))
}

/// `/package.Service/Method` → (`package.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.split_once('/') {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => (path.to_owned(), String::new()),
    }
}

/// The ids of a valid `traceparent` header (W3C Trace Context, level 1).
#[derive(Debug, PartialEq, Eq)]
struct TraceParent<'a> {
    trace_id: &'a str,
    parent_id: &'a str,
}

/// Reads the request's `traceparent`: `VERSION-TRACE_ID-PARENT_ID-FLAGS`, lower-case hex of
/// 2, 32, 16 and 2 digits, ids not all zero, version not `ff`. Version `00` is exactly that;
/// a later version may append `-...`, which is not read. Absent, repeated or malformed:
/// `None`.
fn traceparent(headers: &http::HeaderMap) -> Option<TraceParent<'_>> {
    let mut all = headers.get_all("traceparent").iter();
    let value = all.next()?.to_str().ok()?;
    if all.next().is_some() {
        return None;
    }
    let b = value.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zeros = |s: &str| s.bytes().all(|c| c == b'0');
    let shaped = b.len() >= 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(0..2)
        && hex(3..35)
        && hex(36..52)
        && hex(53..55);
    if !shaped {
        return None;
    }
    let (version, trace_id, parent_id) = (&value[0..2], &value[3..35], &value[36..52]);
    let length_ok = match version {
        "ff" => false,
        "00" => b.len() == 55,
        _ => b.len() == 55 || b[55] == b'-',
    };
    (length_ok && !zeros(trace_id) && !zeros(parent_id)).then_some(TraceParent {
        trace_id,
        parent_id,
    })
}

/// Adds `Observe` around the gRPC routes.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    metrics: Metrics,
    /// Whether `traceparent` headers are read into the span.
    trace_propagation: bool,
}

impl ObserveLayer {
    pub fn new(metrics: Metrics, trace_propagation: bool) -> Self {
        Self {
            metrics,
            trace_propagation,
        }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.metrics.clone(),
            trace_propagation: self.trace_propagation,
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
    trace_propagation: bool,
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
            trace_id = tracing::field::Empty,
            parent_span_id = tracing::field::Empty,
        );
        if self.trace_propagation {
            if let Some(trace) = traceparent(req.headers()) {
                span.record("trace_id", trace.trace_id);
                span.record("parent_span_id", trace.parent_id);
            }
        }
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

    fn parsed(values: &[&str]) -> Option<(String, String)> {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(
                "traceparent",
                http::HeaderValue::from_str(v).expect("ascii"),
            );
        }
        traceparent(&h).map(|t| (t.trace_id.to_owned(), t.parent_id.to_owned()))
    }

    #[test]
    fn only_a_well_formed_traceparent_is_read() {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const PARENT: &str = "00f067aa0ba902b7";
        let good = format!("00-{TRACE}-{PARENT}-01");
        assert_eq!(
            parsed(&[&good]),
            Some((TRACE.to_owned(), PARENT.to_owned()))
        );
        // A later version may carry more after the four fields.
        assert!(parsed(&[&format!("cc-{TRACE}-{PARENT}-01-what-comes-next")]).is_some());
        assert!(parsed(&[&format!("cc-{TRACE}-{PARENT}-01")]).is_some());
        for bad in [
            String::new(),
            format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            format!("00-{}-{PARENT}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("ff-{TRACE}-{PARENT}-01"),
            format!("00-{TRACE}-{PARENT}-01-extra"),
            format!("cc-{TRACE}-{PARENT}-01x"),
            format!("00-{TRACE}-{PARENT}-1"),
            format!("00_{TRACE}-{PARENT}-01"),
            format!("00-{}-{PARENT}-01", &TRACE[..31]),
            format!("0x-{TRACE}-{PARENT}-01"),
            format!(" 00-{TRACE}-{PARENT}-01"),
        ] {
            assert_eq!(parsed(&[&bad]), None, "{bad:?}");
        }
        // Two headers: which one is meant is unknown.
        assert_eq!(parsed(&[&good, &good]), None);
        assert_eq!(parsed(&[]), None);
    }
}
