//! Limits on abuse: per-identity rate limits answering RESOURCE_EXHAUSTED with a RetryInfo
//! (a flood from one identity leaves another served), and the cap on open connections.

use std::time::{Duration, Instant};

use pii_vault::proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::util::{
    assert_reason, audit_events, channel_as, client_for, create_tenant, get, put, text, TestVault,
};

fn get_request() -> pb::GetFieldsRequest {
    pb::GetFieldsRequest {
        tenant_id: "acme".into(),
        subject_id: "alice".into(),
        field_names: vec!["email".into()],
        purpose: "support".into(),
    }
}

/// 100,000 calls from an identity with no grant: after a few PERMISSION_DENIED it is
/// refused with RESOURCE_EXHAUSTED before any handler runs, while the dev client, calling
/// at an ordinary pace all along, is served every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_from_one_identity_is_exhausted_while_another_is_served() {
    const FLOOD: usize = 100_000;
    const WORKERS: usize = 64;
    let vault = TestVault::start_with(|raw| {
        raw.limits.requests_per_second = Some(50);
        raw.limits.request_burst = Some(50);
        raw.limits.denied_per_second = Some(2);
        raw.limits.denied_burst = Some(10);
        // Held refusals pace a flood to its streams per delay; at 1 ms the 100,000 calls
        // finish in seconds (the hold itself is `a_refusal_is_held_before_it_is_answered`).
        raw.limits.refusal_delay_ms = Some(1);
    })
    .await;
    create_tenant(&vault, "acme").await;
    let mut records = vault.records().await;
    put(
        &mut records,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "a@example.com")],
    )
    .await
    .expect("put");

    let flooder = channel_as(&vault, &client_for(&vault, "flood", "spiffe://test/flood")).await;
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let mut client = pb::record_service_client::RecordServiceClient::new(flooder.clone());
            tokio::spawn(async move {
                let (mut exhausted, mut denied, mut other) = (0usize, 0usize, Vec::new());
                for _ in 0..FLOOD / WORKERS {
                    match client.get_fields(get_request()).await {
                        Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
                        Err(s) if s.code() == Code::PermissionDenied => denied += 1,
                        Err(s) => other.push((s.code(), s.message().to_owned())),
                        Ok(_) => other.push((Code::Ok, String::new())),
                    }
                }
                (exhausted, denied, other)
            })
        })
        .collect();

    // The other identity, meanwhile: one GetFields every 50 ms, each served.
    let mut served = 0;
    while !workers.iter().all(|w| w.is_finished()) {
        let fields = get(&mut records, "acme", "alice", &["email"])
            .await
            .expect("the other identity is served during the flood");
        assert_eq!(fields.len(), 1);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut exhausted, mut denied) = (0, 0);
    for w in workers {
        let (e, d, other) = w.await.expect("flood worker");
        assert!(other.is_empty(), "unexpected answers: {other:?}");
        exhausted += e;
        denied += d;
    }
    assert_eq!(exhausted + denied, FLOOD - FLOOD % WORKERS);
    assert!(
        exhausted > 99_000,
        "only {exhausted} RESOURCE_EXHAUSTED ({denied} PERMISSION_DENIED)"
    );
    assert!(served > 0);
    eprintln!(
        "flood: {exhausted} exhausted, {denied} denied in {:?}; other identity served {served} times",
        started.elapsed()
    );
}

/// An identity over its rate is told when to come back, in a RetryInfo that decodes.
#[tokio::test]
async fn resource_exhausted_carries_a_retry_info() {
    let vault = TestVault::start_with(|raw| {
        raw.limits.requests_per_second = Some(1);
        raw.limits.request_burst = Some(3);
    })
    .await;
    let mut records = vault.records().await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err(s) = records.get_fields(get_request()).await {
            if s.code() == Code::ResourceExhausted {
                refused = Some(s);
                break;
            }
        }
    }
    let status = refused.expect("a call over the burst is refused");
    assert!(
        status.message().contains("too many requests"),
        "{}",
        status.message()
    );
    let retry = status.get_details_retry_info().expect("a RetryInfo detail");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_millis(1100),
        "{delay:?}"
    );
    // After the delay, the identity is served again.
    tokio::time::sleep(delay).await;
    let again = records.get_fields(get_request()).await;
    assert_ne!(again.err().map(|s| s.code()), Some(Code::ResourceExhausted));
}

/// A call refused for its rate is answered only after `refusal_delay_ms`, so a client that
/// retries at once cannot make the vault refuse as fast as it can send; its RetryInfo says
/// what is left of the wait after the hold. An admitted call is not held.
#[tokio::test]
async fn a_refusal_is_held_before_it_is_answered() {
    const DELAY: Duration = Duration::from_millis(300);
    let vault = TestVault::start_with(|raw| {
        raw.limits.requests_per_second = Some(1);
        raw.limits.request_burst = Some(1);
        raw.limits.refusal_delay_ms = Some(300);
    })
    .await;
    let mut records = vault.records().await;
    let sent = Instant::now();
    let admitted = records.get_fields(get_request()).await;
    assert_ne!(
        admitted.err().map(|s| s.code()),
        Some(Code::ResourceExhausted)
    );
    assert!(sent.elapsed() < DELAY, "an admitted call is not held");
    let sent = Instant::now();
    let status = records
        .get_fields(get_request())
        .await
        .expect_err("over the burst");
    let held = sent.elapsed();
    assert_reason(&status, Code::ResourceExhausted, "RATE_LIMITED");
    assert!(held >= DELAY, "answered after {held:?}");
    let delay = status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a retry delay");
    assert!(
        delay <= Duration::from_millis(1000) - DELAY + Duration::from_millis(10),
        "the hold counts against the wait: {delay:?}"
    );
}

/// With `max_connections = 2`, a third connection is closed at once; once one of the
/// first two goes, a new one is served.
#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let vault = TestVault::start_with(|raw| raw.limits.max_connections = Some(2)).await;
    let call = |c: tonic::transport::Channel| async move {
        pb::tenant_service_client::TenantServiceClient::new(c)
            .list_tenants(pb::ListTenantsRequest::default())
            .await
    };
    let first = vault.channel().await;
    let second = vault.channel().await;
    call(first.clone()).await.expect("first connection served");
    call(second.clone())
        .await
        .expect("second connection served");
    let third = pii_vault::client::connect(&vault.addr.to_string(), &vault.certs()).await;
    let third_served = match third {
        Err(_) => false,
        Ok(c) => call(c).await.is_ok(),
    };
    assert!(!third_served, "a third connection must not be served");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(c) = pii_vault::client::connect(&vault.addr.to_string(), &vault.certs()).await {
            if call(c).await.is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "a connection slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    call(second).await.expect("second connection still served");
}

/// Denied GetFields calls of `identity`, each answered PERMISSION_DENIED.
async fn denied_calls(vault: &TestVault, identity: &str, n: usize) {
    let channel = channel_as(
        vault,
        &client_for(vault, identity, &format!("spiffe://test/{identity}")),
    )
    .await;
    let mut client = pb::record_service_client::RecordServiceClient::new(channel);
    for _ in 0..n {
        let status = client
            .get_fields(get_request())
            .await
            .expect_err("no grant");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
}

/// The audit events of `identity`: (denied events recorded one by one, summaries).
async fn denial_events(vault: &TestVault, identity: &str) -> (usize, Vec<pb::AuditEvent>) {
    let caller = format!("uri:spiffe://test/{identity}");
    let events: Vec<_> = audit_events(&vault.channel().await, pb::QueryAuditLogRequest::default())
        .await
        .into_iter()
        .filter(|e| e.caller == caller)
        .collect();
    assert!(events
        .iter()
        .all(|e| e.outcome == pb::Outcome::Denied as i32));
    let (summaries, single): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| e.operation == "denials_summary");
    (single.len(), summaries)
}

/// Postmortem: a certificate holder with no grant wrote 100,000 durable "denied" events.
/// Past the first few in a window its denials are counted, and the count is recorded when
/// the window ends: by the next denial after it, or at shutdown; none is lost.
#[tokio::test]
async fn repeated_denials_are_summarised_without_losing_the_count() {
    let vault = TestVault::start_with(|raw| {
        raw.audit.denial_events_per_window = Some(3);
        raw.audit.denial_window_secs = Some(5);
        // Below the refusal bucket's burst, so every call reaches the handler.
        raw.limits.denied_burst = Some(100);
    })
    .await;
    create_tenant(&vault, "acme").await;
    denied_calls(&vault, "probe", 40).await;
    let (single, summaries) = denial_events(&vault, "probe").await;
    assert_eq!(single, 3, "the first three of the window, one event each");
    assert!(summaries.is_empty(), "the window is still open");

    // The next denial after the window closes it: 37 counted, in one summary.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    denied_calls(&vault, "probe", 1).await;
    let (single, summaries) = denial_events(&vault, "probe").await;
    assert_eq!(single, 4, "a new window records its first denial again");
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    assert!(
        summaries[0].reason.starts_with("37 further denials")
            && summaries[0].reason.ends_with("get_fields 37"),
        "{}",
        summaries[0].reason
    );

    // Counted denials of a window still open at shutdown are recorded before the log
    // closes.
    denied_calls(&vault, "other", 12).await;
    let vault = vault.restart().await;
    let (single, summaries) = denial_events(&vault, "other").await;
    assert_eq!(single, 3);
    assert_eq!(summaries.len(), 1, "{summaries:#?}");
    assert!(
        summaries[0].reason.starts_with("9 further denials"),
        "{}",
        summaries[0].reason
    );
}
