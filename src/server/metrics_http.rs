//! The Prometheus endpoint: plain HTTP/1.1 `GET /metrics` on a listener of its own
//! (`[metrics] listen`), apart from the mTLS gRPC port. It serves counts, latencies, key
//! versions and sizes, never personal data; bind it to loopback or a monitoring network.
//! It also answers the probes of an orchestrator: `GET /livez` (200 while the process
//! answers) and `GET /readyz` (200 while the vault can serve, else 503 with the reason:
//! `health.rs`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::health::{Readiness, ReadyState};
use crate::metrics::{Metrics, CONTENT_TYPE};

/// Longest one scrape connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Metrics, ready: Arc<ReadyState>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = respond(&metrics, &ready, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics endpoint: connection failed"),
                Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
            }
        });
    }
}

fn respond<B>(
    metrics: &Metrics, ready: &ReadyState, req: &http::Request<B>,
) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/metrics") => (http::StatusCode::OK, CONTENT_TYPE, metrics.encode()),
        (&http::Method::GET, "/livez") => (http::StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&http::Method::GET, "/readyz") => {
            let now = ready.get();
            let status = if now == Readiness::Ready {
                http::StatusCode::OK
            } else {
                http::StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "text/plain", format!("{}\n", now.reason()))
        }
        (_, "/metrics" | "/livez" | "/readyz") => (
            http::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics, health at /livez and /readyz\n".to_owned(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}
