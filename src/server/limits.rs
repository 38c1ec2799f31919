//! Per-identity rate limits: a tower layer after the mTLS identity is known (the caller is
//! in the request's extensions) and before any handler runs.
//!
//! Each identity has two token buckets. Every request takes a token from the first
//! (`requests_per_second`, `request_burst`). The second counts refusals: every response
//! that answers PERMISSION_DENIED or UNAUTHENTICATED takes a token from it
//! (`denied_per_second`, `denied_burst`), and while it is empty the identity is refused
//! every request. So an occasional refusal costs nothing, while an identity probing what it
//! may do is limited hardest, far below the ordinary rate. A refused request answers
//! RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` saying when a token is back; it never
//! reaches a handler and writes no audit event.
//!
//! A refused request is held for `refusal_delay` before its answer goes out (a tarpit). A
//! client that ignores RetryInfo and retries at once then makes at most one request per
//! open stream per delay, and the streams of a connection are capped: its flood costs the
//! vault a few thousand cheap refusals a second instead of as many as its CPU can send
//! (answered at once, a 64-stream flood was refused about 14,000 times a second and the
//! other identity's p99 in the flood benchmark rose about 4x). Held refusals are capped
//! too (`MAX_HELD`); past the cap they are answered at once.
//!
//! Buckets live in memory, one per identity seen recently; full buckets idle for a while
//! are dropped when the table grows, so its size follows the identities in use.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use crate::authz::Caller;
use crate::config::AbuseLimits;
use crate::proto::v1::ErrorReason;

/// Past this many identities, buckets that are full again are dropped.
const TRIM_AT: usize = 4096;

/// How long a refused request's body is read (and thrown away) before the answer goes out.
const DRAIN_FOR: Duration = Duration::from_millis(500);

/// Most refused requests held at once; each holds a stream and a timer, nothing more.
const MAX_HELD: usize = 16 * 1024;

/// A token bucket: `tokens` refill at `rate` per second up to `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
    }

    /// How long until one token is back (zero if one is there).
    fn wait(&self) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    fn is_full(&self) -> bool {
        self.tokens >= self.burst
    }
}

/// Both buckets of one identity.
#[derive(Debug)]
struct Allowance {
    requests: Bucket,
    denied: Bucket,
    seen: Instant,
}

/// The buckets of every identity seen recently, shared by all connections.
#[derive(Debug)]
pub(super) struct RateLimiter {
    limits: AbuseLimits,
    table: Mutex<HashMap<String, Allowance>>,
    /// One permit per refusal that may be held (`MAX_HELD`).
    held: Arc<Semaphore>,
}

impl RateLimiter {
    pub(super) fn new(limits: AbuseLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(HashMap::new()),
            held: Arc::new(Semaphore::new(MAX_HELD)),
        })
    }

    /// How long a refusal is held, and the permit it is held under; none (answer at once)
    /// when holding is off or `MAX_HELD` refusals are held already.
    fn hold(&self) -> Option<(Duration, OwnedSemaphorePermit)> {
        let delay = self.limits.refusal_delay;
        if delay.is_zero() {
            return None;
        }
        self.held
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| (delay, p))
    }

    fn with<T>(&self, identity: &str, f: impl FnOnce(&mut Allowance) -> T) -> T {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if table.len() >= TRIM_AT && !table.contains_key(identity) {
            table.retain(|_, a| {
                let idle = now.saturating_duration_since(a.seen);
                let mut requests = a.requests;
                let mut denied = a.denied;
                requests.refill(idle);
                denied.refill(idle);
                !(requests.is_full() && denied.is_full())
            });
        }
        let l = self.limits;
        let allowance = table
            .entry(identity.to_owned())
            .or_insert_with(|| Allowance {
                requests: Bucket::full(l.requests_per_second, l.request_burst),
                denied: Bucket::full(l.denied_per_second, l.denied_burst),
                seen: now,
            });
        let elapsed = now.saturating_duration_since(allowance.seen);
        allowance.requests.refill(elapsed);
        allowance.denied.refill(elapsed);
        allowance.seen = now;
        f(allowance)
    }

    /// Takes a request token for `identity`, or says how long to wait for one.
    fn admit(&self, identity: &str) -> Result<(), Duration> {
        self.with(identity, |a| {
            let wait = a.requests.wait().max(a.denied.wait());
            if wait.is_zero() {
                a.requests.tokens -= 1.0;
                Ok(())
            } else {
                Err(wait)
            }
        })
    }

    /// Counts a refused request of `identity`.
    fn refused(&self, identity: &str) {
        self.with(identity, |a| {
            a.denied.tokens = (a.denied.tokens - 1.0).max(0.0);
        });
    }
}

/// Adds `RateLimit` around the gRPC routes.
#[derive(Clone, Debug)]
pub(super) struct RateLimitLayer(pub(super) Arc<RateLimiter>);

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.0.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

/// The answer to a request over its identity's limit.
fn exhausted(wait: Duration) -> http::Response<Body> {
    // Round up to whole milliseconds, at least one, so a client never retries at once.
    let wait = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
        + Duration::from_millis(1);
    let mut details = ErrorDetails::with_retry_info(Some(wait));
    details.set_error_info(
        ErrorReason::RateLimited.as_str_name(),
        crate::proto::ERROR_DOMAIN,
        HashMap::new(),
    );
    let status = tonic::Status::with_error_details(
        Code::ResourceExhausted,
        "too many requests from this client identity; retry later",
        details,
    );
    status.into_http()
}

/// Reads and drops what is left of a refused request's body, for at most `DRAIN_FOR`.
///
/// An answer sent before the request's data has arrived makes HTTP/2 reset the stream, and
/// the data frames still on their way then count against the connection as frames for a
/// reset stream: a flood of refusals would get its whole connection closed
/// (ENHANCE_YOUR_CALM), failing the requests in flight with transport errors instead of
/// RESOURCE_EXHAUSTED. Nothing of the body is kept.
async fn drain<B: http_body::Body + Unpin>(mut body: B) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

/// Whether a response refuses its caller (the final status of an error is in its headers).
fn is_refusal(headers: &http::HeaderMap) -> bool {
    const DENIED: &[u8] = b"7";
    const UNAUTHENTICATED: &[u8] = b"16";
    matches!(
        headers.get("grpc-status").map(|s| s.as_bytes()),
        Some(DENIED | UNAUTHENTICATED)
    )
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for RateLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: http_body::Body + Unpin + Send + 'static,
    ReqBody::Data: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let identity = req
            .extensions()
            .get::<Caller>()
            .map(|c| c.identity.to_string());
        let Some(identity) = identity else {
            // No verified identity: the handler refuses the call (UNAUTHENTICATED).
            return Box::pin(self.inner.call(req));
        };
        if let Err(wait) = self.limiter.admit(&identity) {
            let hold = self.limiter.hold();
            return Box::pin(async move {
                let refused = Instant::now();
                drain(req.into_body()).await;
                if let Some((delay, _permit)) = hold {
                    tokio::time::sleep_until((refused + delay).into()).await;
                }
                Ok(exhausted(wait.saturating_sub(refused.elapsed())))
            });
        }
        let limiter = self.limiter.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let resp = inner.call(req).await?;
            if is_refusal(resp.headers()) {
                limiter.refused(&identity);
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, denied_rate: u32, denied_burst: u32) -> AbuseLimits {
        AbuseLimits {
            requests_per_second: rate,
            request_burst: burst,
            denied_per_second: denied_rate,
            denied_burst,
            max_connections: 1,
            max_streams_per_connection: 1,
            refusal_delay: Duration::ZERO,
        }
    }

    #[test]
    fn a_burst_is_admitted_then_refused_with_a_wait() {
        let limiter = RateLimiter::new(limits(1, 3, 1, 5));
        for _ in 0..3 {
            assert_eq!(limiter.admit("uri:a"), Ok(()));
        }
        let wait = limiter.admit("uri:a").expect_err("over the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // Another identity has its own bucket.
        assert_eq!(limiter.admit("uri:b"), Ok(()));
    }

    #[test]
    fn refusals_are_held_up_to_the_cap_then_answered_at_once() {
        let mut l = limits(1, 1, 1, 1);
        assert!(
            RateLimiter::new(l).hold().is_none(),
            "a zero delay holds nothing"
        );
        l.refusal_delay = Duration::from_millis(50);
        let limiter = RateLimiter::new(l);
        let held: Vec<_> = (0..MAX_HELD).map_while(|_| limiter.hold()).collect();
        assert_eq!(held.len(), MAX_HELD);
        assert!(limiter.hold().is_none(), "past the cap: answered at once");
        drop(held);
        let (delay, _permit) = limiter.hold().expect("permits come back");
        assert_eq!(delay, Duration::from_millis(50));
    }

    #[test]
    fn refusals_past_their_burst_refuse_everything() {
        let limiter = RateLimiter::new(limits(1000, 1000, 1, 2));
        assert_eq!(limiter.admit("uri:probe"), Ok(()));
        limiter.refused("uri:probe");
        assert_eq!(
            limiter.admit("uri:probe"),
            Ok(()),
            "one refusal costs nothing"
        );
        limiter.refused("uri:probe");
        assert!(limiter.admit("uri:probe").is_err());
        assert_eq!(limiter.admit("uri:other"), Ok(()));
    }
}
