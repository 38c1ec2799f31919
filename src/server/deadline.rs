//! Request deadlines: a request still running at `limits.request_timeout_ms`, or at the
//! caller's own deadline (`grpc-timeout`, less `CALLER_MARGIN` so the answer arrives before
//! the caller gives up), is answered DEADLINE_EXCEEDED.
//!
//! The work is never cut off part-way: each request runs in a task of its own, which
//! finishes after the answer (a write goes on to its audit event, a read's event is still
//! recorded). Dropping the request's future instead (what a plain timeout, or a caller
//! that hangs up, does) could stop a use case between its change and its audit event. A
//! caller that gets DEADLINE_EXCEEDED cannot tell whether the work was done: a write sent
//! again under the same idempotency key is answered with the first one's result.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;

/// How much earlier than the caller's deadline the vault answers.
const CALLER_MARGIN: Duration = Duration::from_millis(5);

/// Adds `Deadline` around a service.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    /// `limit`: the longest any request may run (the server's own deadline).
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            limit: self.limit,
        }
    }
}

/// Answers DEADLINE_EXCEEDED for a request past its deadline; see the module documentation.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

/// The caller's deadline from a `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`);
/// `None` when absent or malformed.
fn caller_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn exceeded(budget: Duration) -> http::Response<Body> {
    tonic::Status::deadline_exceeded(format!(
        "the request did not complete within its deadline ({} ms); it may still complete: \
         send a write again under the same idempotency key to learn its result",
        budget.as_millis()
    ))
    .into_http()
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let budget = match caller_timeout(req.headers()) {
            Some(t) => t.saturating_sub(CALLER_MARGIN).min(self.limit),
            None => self.limit,
        };
        if budget.is_zero() {
            // Too late to start: nothing is done.
            return Box::pin(async move { Ok(exceeded(budget)) });
        }
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let work = tokio::spawn(inner.call(req).in_current_span());
        Box::pin(async move {
            match tokio::time::timeout(budget, work).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) => {
                    tracing::error!("a request's task panicked");
                    Ok(tonic::Status::internal("internal error").into_http())
                }
                // The task runs on to its end; only the answer is given up.
                Err(_) => Ok(exceeded(budget)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "grpc-timeout",
            http::HeaderValue::from_str(value).expect("header"),
        );
        caller_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_malformed_ones_are_ignored() {
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "10s", "1.5S", "-1S", "10"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(caller_timeout(&http::HeaderMap::new()), None);
    }
}
