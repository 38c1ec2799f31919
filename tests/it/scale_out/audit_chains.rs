//! The audit log of nodes sharing one PostgreSQL database: each node keeps a chain of its
//! own (its node number in every event), the events of all nodes take one merged order
//! without gaps, each chain is verified on its own, and a prune keeps every chain
//! verifiable. Two in-process vaults with hand-moved clocks over one fresh database, with
//! one root key (so one audit key), as the nodes of a deployment have.

use std::sync::Arc;

use pii_vault::audit::{AuditEvent, AuditFilter, Operation};
use pii_vault::domain::{
    Category, FieldName, FieldValue, ManualClock, NewField, Purpose, SubjectId, TenantId, Timestamp,
};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::service::{Vault, VaultSettings};
use pii_vault::storage::{PgStore, PgTls, Store};
use tempfile::TempDir;

use crate::postgres;
use crate::util::{admin_authz, admin_call};

const DAY: u64 = 86_400_000_000;

struct Node {
    vault: Vault,
    clock: Arc<ManualClock>,
}

/// Two vaults on one fresh database, with tenant `acme` created through the first; `None`
/// (skipped) without PostgreSQL.
async fn two_vaults(test: &str) -> Option<(Node, Node, String, TempDir)> {
    let server = postgres::server_or_skip(test)?;
    let url = server.fresh_database();
    let dir = TempDir::new().expect("dir");
    let root_file = dir.path().join("root.key");
    RootKeys::generate()
        .expect("root")
        .save(&root_file)
        .expect("save root");
    let node = || {
        let store: Arc<dyn Store> =
            Arc::new(PgStore::connect(&url, 4, &PgTls::Disable).expect("connect"));
        let keys = Keyring::open(RootKeys::load(&root_file).expect("root"), store.clone())
            .expect("keyring");
        let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000_000)));
        let vault = Vault::open(
            store,
            keys,
            admin_authz(),
            clock.clone(),
            VaultSettings::default(),
        )
        .expect("vault");
        Node { vault, clock }
    };
    let a = node();
    let b = node();
    a.vault
        .create_tenant(&admin_call(), &TenantId::parse("acme").expect("id"))
        .await
        .expect("tenant");
    Some((a, b, url, dir))
}

fn field(v: &str) -> NewField {
    NewField {
        expected_version: None,
        name: FieldName::parse("n").expect("name"),
        category: Category::Usage,
        value: FieldValue::Text(v.into()),
        indexed: false,
        ttl: None,
        transaction_record: false,
    }
}

/// `n` writes and reads of subjects `{prefix}{i}` through `node`.
async fn traffic(node: &Node, prefix: &str, n: usize) {
    let (call, tenant) = (admin_call(), TenantId::parse("acme").expect("id"));
    let purpose = Purpose::parse("support").expect("purpose");
    for i in 0..n {
        let s = SubjectId::parse(&format!("{prefix}{i}")).expect("id");
        node.vault
            .put_fields(&call, &tenant, &s, &[field("x")])
            .await
            .expect("put");
        node.vault
            .get_fields(&call, &tenant, &s, &[], &purpose)
            .await
            .expect("get");
    }
}

fn all_events(vault: &Vault) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = vault
            .audit_log()
            .query(&AuditFilter::default(), after, 1000)
            .expect("query");
        events.extend(page.events);
        if page.end {
            return events;
        }
        after = page.cursor;
    }
}

/// The node number of the events `vault` wrote (its reads of `prefix` subjects).
fn node_of(events: &[AuditEvent], prefix: &str) -> u64 {
    let nodes: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| {
            e.draft.operation == Operation::GetFields && e.draft.subject.starts_with(prefix)
        })
        .map(|e| e.node)
        .collect();
    assert_eq!(
        nodes.len(),
        1,
        "one node wrote every {prefix} read: {nodes:?}"
    );
    nodes.into_iter().next().expect("a node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_keeps_its_own_chain_in_one_merged_order() {
    let Some((a, b, _url, _dir)) = two_vaults("scale_out::audit_chains_merged").await else {
        return;
    };
    // Both nodes append at the same time.
    let (ta, tb) = tokio::join!(traffic(&a, "a", 30), traffic(&b, "b", 30));
    let _ = (ta, tb);
    let events = all_events(&b.vault);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "one merged order, without gaps"
    );
    let (node_a, node_b) = (node_of(&events, "a"), node_of(&events, "b"));
    assert!(
        node_a != 0 && node_b != 0 && node_a != node_b,
        "{node_a} {node_b}"
    );
    // The chains interleave in the merged order, and each links only its own events.
    for node in [node_a, node_b] {
        let chain: Vec<&AuditEvent> = events.iter().filter(|e| e.node == node).collect();
        assert_eq!(
            chain[0].prev_mac, [0; 32],
            "a node's chain starts from nothing"
        );
        for pair in chain.windows(2) {
            assert_eq!(
                pair[1].prev_mac, pair[0].mac,
                "node {node} links its own events"
            );
        }
    }
    for node in [&a, &b] {
        let report = node.vault.audit_log().verify().expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.checked, events.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_keeps_every_nodes_chain_verifiable() {
    let Some((a, b, _url, _dir)) = two_vaults("scale_out::audit_chains_prune").await else {
        return;
    };
    traffic(&a, "a", 10).await;
    traffic(&b, "b", 10).await;
    traffic(&a, "c", 5).await;
    let old = all_events(&a.vault).len() as u64;
    for node in [&a, &b] {
        node.clock.advance_micros(400 * DAY);
    }
    traffic(&b, "d", 5).await;
    traffic(&a, "e", 5).await;
    let report = a.vault.prune_audit(&admin_call(), 0).await.expect("prune");
    assert_eq!(report.through, Some(old), "{report:?}");
    // Both chains continue after the prune, from where their pruned events left them.
    traffic(&b, "f", 3).await;
    traffic(&a, "g", 3).await;
    for node in [&a, &b] {
        let verified = node.vault.audit_log().verify().expect("verify");
        assert!(verified.is_ok(), "{verified:?}");
        assert_eq!(verified.first_seq, old + 1);
    }
    let remaining = all_events(&b.vault);
    assert_eq!(remaining.first().map(|e| e.seq), Some(old + 1));
    // Both nodes' reads after the cut are there, each on its own chain.
    for prefix in ["d", "e", "f", "g"] {
        node_of(&remaining, prefix);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_to_one_nodes_chain_is_found_at_its_sequence_number() {
    let Some((a, b, url, _dir)) = two_vaults("scale_out::audit_chains_tamper").await else {
        return;
    };
    traffic(&a, "a", 5).await;
    traffic(&b, "b", 5).await;
    traffic(&a, "c", 5).await;
    let events = all_events(&a.vault);
    let node_b = node_of(&events, "b");
    let victim = events
        .iter()
        .filter(|e| e.node == node_b)
        .nth(3)
        .expect("an event of B")
        .seq;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    // A byte of the event's reason flipped in place: it still decodes.
    let row = client
        .query_one(
            "SELECT event FROM pv_audit WHERE seq = $1",
            &[&(victim as i64)],
        )
        .await
        .expect("row");
    let mut bytes: Vec<u8> = row.get(0);
    let at = bytes.len() - 80;
    bytes[at] ^= 0x01;
    client
        .execute(
            "UPDATE pv_audit SET event = $2 WHERE seq = $1",
            &[&(victim as i64), &bytes],
        )
        .await
        .expect("edit");
    let report = a.vault.audit_log().verify().expect("verify");
    assert_eq!(report.first_bad, Some(victim), "{report:?}");
    // Put it back; then lose B's newest event: B's own head finds it missing.
    bytes[at] ^= 0x01;
    client
        .execute(
            "UPDATE pv_audit SET event = $2 WHERE seq = $1",
            &[&(victim as i64), &bytes],
        )
        .await
        .expect("restore");
    assert!(a.vault.audit_log().verify().expect("verify").is_ok());
    // B reads last, so its read is the newest event of the log; then that event is lost.
    // A's head vouches only for older events: B's own head finds it missing.
    traffic(&b, "z", 1).await;
    let newest = all_events(&a.vault).last().expect("events").clone();
    assert_eq!(newest.node, node_b);
    client
        .execute(
            "DELETE FROM pv_audit WHERE seq = $1",
            &[&(newest.seq as i64)],
        )
        .await
        .expect("delete");
    let report = a.vault.audit_log().verify().expect("verify");
    assert_eq!(report.first_bad, Some(newest.seq), "{report:?}");
    assert_eq!(
        report.problem.as_deref(),
        Some("events missing at the end of the log")
    );
}
