//! The unwrapped-DEK cache: a hot read is served from it (and counted), an erased subject
//! never is, a subject record with another wrap never gets the cached key, rotation, DEK
//! replacement and shredding drop entries, and the capacity bound holds with the key
//! material of evicted entries dropped.
//!
//! Most tests drive a `Keyring` over a real sled store directly; two keyrings over one store
//! stand for two vault nodes on one database. The last test goes through the server and its
//! metrics endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};

use pii_vault::crypto::{Dek, Key};
use pii_vault::domain::{SubjectId, Timestamp};
use pii_vault::keyring::{Keyring, RootKeys};
use pii_vault::proto::v1 as pb;
use pii_vault::storage::{
    Erasure, SledStore, Store, SubjectRecord, SubjectWrite, TenantRecord, Tombstone,
};
use tempfile::TempDir;

use super::{sid, tid};
use crate::erasure::erase;
use crate::metrics::{http_get, sample};
use crate::util::{create_tenant, free_port, get, put, text, TestVault};

const NOW: Timestamp = Timestamp(1_700_000_000_000_000);

/// A store, its root key file, and a tenant `acme`.
struct Setup {
    _dir: TempDir,
    root_file: std::path::PathBuf,
    store: Arc<dyn Store>,
    tenant: TenantRecord,
}

fn setup() -> Setup {
    setup_on(|dir| Arc::new(SledStore::open(&dir.join("store"), 16 << 20).expect("store")))
}

/// `setup` over the store `open` makes (given a directory for its files).
fn setup_on(open: impl FnOnce(&Path) -> Arc<dyn Store>) -> Setup {
    let dir = TempDir::new().expect("dir");
    let root_file = dir.path().join("root.key");
    RootKeys::generate()
        .expect("root")
        .save(&root_file)
        .expect("save root");
    let store = open(dir.path());
    let keys = node(&root_file, &store, 16);
    let tenant = keys
        .create_tenant(&tid("acme"), NOW)
        .expect("create tenant")
        .expect("new tenant");
    Setup {
        _dir: dir,
        root_file,
        store,
        tenant,
    }
}

/// One vault node's keyring over the shared store, caching `capacity` DEKs.
fn node(root_file: &Path, store: &Arc<dyn Store>, capacity: usize) -> Keyring {
    Keyring::open(RootKeys::load(root_file).expect("root"), store.clone())
        .expect("keyring")
        .with_dek_cache(capacity, None)
}

/// Creates `subject` (record and DEK) in the store; returns its record.
fn create_subject(keys: &Keyring, s: &Setup, subject: &SubjectId) -> SubjectRecord {
    let (_dek, record) = keys
        .new_subject(&s.tenant, subject, NOW, 0)
        .expect("new subject");
    let write = SubjectWrite {
        subject: record,
        fields: Vec::new(),
        now: NOW,
        by: "test".into(),
        may_replace: u32::MAX,
        idempotency: None,
    };
    s.store
        .put_fields(&s.tenant.id, subject, &write)
        .expect("store subject");
    stored(s, subject).expect("stored")
}

fn stored(s: &Setup, subject: &SubjectId) -> Option<SubjectRecord> {
    s.store.subject(&s.tenant.id, subject).expect("read")
}

/// The current DEK of `subject` as a node would get it for a read: record first.
fn read_dek(keys: &Keyring, s: &Setup, subject: &SubjectId) -> Arc<Key<Dek>> {
    let record = stored(s, subject).expect("subject exists");
    keys.subject_dek(&s.tenant.id, subject, &record)
        .expect("subject DEK")
}

fn hits_misses(keys: &Keyring) -> (u64, u64) {
    let stats = keys.dek_cache_stats();
    (stats.hits, stats.misses)
}

#[test]
fn a_hot_read_hits_and_returns_the_same_key() {
    let s = setup();
    let keys = node(&s.root_file, &s.store, 16);
    let alice = sid("alice");
    create_subject(&keys, &s, &alice);
    let first = read_dek(&keys, &s, &alice);
    assert_eq!(hits_misses(&keys), (0, 1));
    let second = read_dek(&keys, &s, &alice);
    assert_eq!(hits_misses(&keys), (1, 1));
    assert!(
        Arc::ptr_eq(&first, &second),
        "the hit is the cached key itself"
    );
    let stats = keys.dek_cache_stats();
    assert_eq!((stats.entries, stats.capacity), (1, 16));
    assert_eq!(stats.hit_rate(), Some(0.5));
    // A node with the cache disabled unwraps every time, and still finds the same key.
    let uncached = node(&s.root_file, &s.store, 0);
    let a = read_dek(&uncached, &s, &alice);
    let b = read_dek(&uncached, &s, &alice);
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(a.secret_bytes(), first.secret_bytes());
    assert_eq!(hits_misses(&uncached), (0, 2));
    assert_eq!(uncached.dek_cache_stats().entries, 0);
}

#[test]
fn an_erased_subject_is_never_served_and_its_key_leaves_the_cache() {
    let s = setup();
    // Two nodes on one database: `a` erases, `b` only ever reads.
    let (a, b) = (
        node(&s.root_file, &s.store, 16),
        node(&s.root_file, &s.store, 16),
    );
    let alice = sid("alice");
    let record = create_subject(&a, &s, &alice);
    let on_a = Arc::downgrade(&read_dek(&a, &s, &alice));
    let on_b = read_dek(&b, &s, &alice);
    assert_eq!(b.dek_cache_stats().entries, 1);

    let tombstone = Tombstone {
        erased_at: NOW,
        caller: "test".into(),
        receipt_id: "er-test".into(),
        categories: 0,
        purged: false,
        retained_categories: 0,
        retained_until: NOW,
        seal: None,
    };
    let erased = s
        .store
        .erase_subject(&s.tenant.id, &alice, &tombstone, &|t, _| t)
        .expect("erase");
    assert!(matches!(erased, Erasure::Erased(_)));
    a.forget_subject_keys(&s.tenant.id, &alice);
    // The erasing node drops the key at once: nothing holds it any more.
    assert!(on_a.upgrade().is_none(), "the erasing node dropped the DEK");
    assert_eq!(a.dek_cache_stats().entries, 0);
    // Every read loads the record first, and there is none: no node reaches its cache.
    assert!(stored(&s, &alice).is_none());

    // A record for the same id with a fresh DEK (re-created, or written by a node whose
    // view differs) gets its own key, never the one cached under the old wrap.
    let (fresh_dek, fresh) = a
        .new_subject(&s.tenant, &alice, NOW, 0)
        .expect("fresh subject record");
    assert_eq!(fresh.dek_version, record.dek_version);
    let served = b
        .subject_dek(&s.tenant.id, &alice, &fresh)
        .expect("fresh DEK");
    assert_eq!(served.secret_bytes(), fresh_dek.secret_bytes());
    assert_ne!(served.secret_bytes(), on_b.secret_bytes());
    // The store never held that record, so `b` did not cache it either.
    assert_eq!(hits_misses(&b), (0, 2));
    assert_eq!(b.dek_cache_stats().entries, 1);
}

#[test]
fn rotation_rewrap_and_dek_replacement_drop_entries() {
    let s = setup();
    let keys = node(&s.root_file, &s.store, 16);
    let (alice, bob) = (sid("alice"), sid("bob"));
    create_subject(&keys, &s, &alice);
    create_subject(&keys, &s, &bob);
    let cached = Arc::downgrade(&read_dek(&keys, &s, &alice));
    read_dek(&keys, &s, &bob);
    assert_eq!(keys.dek_cache_stats().entries, 2);

    // A tenant key rotation drops the tenant's DEKs (a re-wrap follows).
    let (_, target) = keys.rotate_tenant(&s.tenant.id).expect("rotate");
    assert_eq!(keys.dek_cache_stats().entries, 0);
    assert!(cached.upgrade().is_none(), "the DEK left memory");
    let before = read_dek(&keys, &s, &alice);
    let batch = keys
        .rewrap_batch(&s.tenant.id, target, None, 100)
        .expect("re-wrap");
    assert_eq!(batch.rewrapped, 2);
    // The record now holds another wrap of the same DEK: no stale hit, same key bytes.
    let (hits, misses) = hits_misses(&keys);
    let after = read_dek(&keys, &s, &alice);
    assert_eq!(hits_misses(&keys), (hits, misses + 1));
    assert_eq!(after.secret_bytes(), before.secret_bytes());
    assert!(!Arc::ptr_eq(&after, &before));
    keys.finish_rewrap(&s.tenant.id, target)
        .expect("finish")
        .expect("target still current");
    assert_eq!(keys.dek_cache_stats().entries, 0);

    // Replacing a DEK that reached its usage limit drops the subject's entries.
    let cached = Arc::downgrade(&read_dek(&keys, &s, &bob));
    let tenant = s.store.tenant(&s.tenant.id).expect("read").expect("tenant");
    let record = stored(&s, &bob).expect("bob");
    assert!(keys.rotate_dek(&tenant, &bob, &record).expect("rotate DEK"));
    assert!(cached.upgrade().is_none());
    let new = read_dek(&keys, &s, &bob);
    assert_eq!(new.version(), record.dek_version + 1);

    // Shredding drops the tenant's entries too.
    read_dek(&keys, &s, &alice);
    assert!(keys.dek_cache_stats().entries > 0);
    keys.shred_tenant(&s.tenant.id).expect("shred");
    assert_eq!(keys.dek_cache_stats().entries, 0);
}

#[test]
fn root_rotation_empties_the_cache() {
    let s = setup();
    let keys = node(&s.root_file, &s.store, 16);
    let alice = sid("alice");
    create_subject(&keys, &s, &alice);
    let cached = Arc::downgrade(&read_dek(&keys, &s, &alice));
    keys.rotate_root().expect("rotate root");
    assert_eq!(keys.dek_cache_stats().entries, 0);
    assert!(cached.upgrade().is_none());
    // Still readable, through a fresh unwrap.
    read_dek(&keys, &s, &alice);
    assert_eq!(hits_misses(&keys), (0, 2));
}

#[test]
fn the_capacity_bound_holds_and_evicted_keys_are_dropped() {
    let s = setup();
    let keys = node(&s.root_file, &s.store, 3);
    let hot = sid("hot");
    create_subject(&keys, &s, &hot);
    read_dek(&keys, &s, &hot);
    let mut evicted: Vec<Weak<Key<Dek>>> = Vec::new();
    for i in 0..10 {
        let subject = sid(&format!("cold-{i}"));
        create_subject(&keys, &s, &subject);
        evicted.push(Arc::downgrade(&read_dek(&keys, &s, &subject)));
        // The hot subject is read between cold ones: CLOCK keeps it.
        read_dek(&keys, &s, &hot);
        assert!(keys.dek_cache_stats().entries <= 3, "after cold-{i}");
    }
    assert_eq!(keys.dek_cache_stats().entries, 3);
    let (hits, misses) = hits_misses(&keys);
    assert_eq!(misses, 11, "one miss per subject");
    assert_eq!(hits, 10, "every re-read of the hot subject hit");
    // Of ten cold keys at most two are still cached; the others were dropped entirely.
    let alive = evicted.iter().filter(|w| w.upgrade().is_some()).count();
    assert!(alive <= 2, "{alive} cold keys still alive");
}

#[tokio::test]
async fn reads_through_the_server_count_hits_and_an_erased_subject_skips_the_cache() {
    let port = free_port();
    let vault =
        TestVault::start_with(|raw| raw.metrics.listen = Some(format!("127.0.0.1:{port}"))).await;
    let metrics: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let counts = || async move {
        let (_, body) = http_get(metrics, "/metrics").await;
        (
            sample(&body, "piivault_dek_cache_hits_total"),
            sample(&body, "piivault_dek_cache_misses_total"),
        )
    };
    create_tenant(&vault, "acme").await;
    let mut client = vault.records().await;
    put(
        &mut client,
        "acme",
        "alice",
        vec![text("email", pb::Category::Account, "alice@example.com")],
    )
    .await
    .expect("put");
    let before = counts().await;
    get(&mut client, "acme", "alice", &[]).await.expect("get");
    let (hits, misses) = counts().await;
    assert_eq!(misses, before.1 + 1.0, "the first read unwraps");
    for _ in 0..3 {
        get(&mut client, "acme", "alice", &[]).await.expect("get");
    }
    assert_eq!(counts().await, (hits + 3.0, misses), "hot reads hit");

    erase(vault.channel().await, "acme", "alice")
        .await
        .expect("erase");
    let before = counts().await;
    let err = get(&mut client, "acme", "alice", &[])
        .await
        .expect_err("erased");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        counts().await,
        before,
        "the erased subject's read never reached the cache"
    );
}

#[test]
fn entries_older_than_the_age_bound_are_dropped_used_or_not() {
    let s = setup();
    let keys = node(&s.root_file, &s.store, 16);
    let (alice, bob) = (sid("alice"), sid("bob"));
    create_subject(&keys, &s, &alice);
    read_dek(&keys, &s, &alice);
    std::thread::sleep(std::time::Duration::from_millis(50));
    create_subject(&keys, &s, &bob);
    read_dek(&keys, &s, &bob);
    read_dek(&keys, &s, &alice); // a hit does not make an entry younger
    assert_eq!(keys.dek_cache_stats().entries, 2);
    assert_eq!(
        keys.forget_deks_cached_before(std::time::Duration::from_secs(60)),
        0
    );
    assert_eq!(
        keys.forget_deks_cached_before(std::time::Duration::from_millis(25)),
        1,
        "alice's entry is older than 25 ms, bob's is not"
    );
    assert_eq!(keys.dek_cache_stats().entries, 1);
    let (hits, misses) = hits_misses(&keys);
    read_dek(&keys, &s, &bob);
    read_dek(&keys, &s, &alice);
    assert_eq!(
        hits_misses(&keys),
        (hits + 1, misses + 1),
        "bob hit, alice missed"
    );
}

/// Two nodes on one PostgreSQL database: when one destroys keys (here: shreds the tenant),
/// the other's next `sync_caches` drops every key it had cached.
#[test]
fn on_a_shared_store_a_node_drops_its_cached_keys_when_another_destroys_keys() {
    let Some(server) = crate::postgres::server_or_skip("keys::dek_cache::shared_destroy") else {
        return;
    };
    let url = server.fresh_database();
    let s = setup_on(|_| {
        Arc::new(
            pii_vault::storage::PgStore::connect(&url, 2, &pii_vault::storage::PgTls::Disable)
                .expect("connect"),
        )
    });
    let a = node(&s.root_file, &s.store, 16);
    let b = node(&s.root_file, &s.store, 16);
    let alice = sid("alice");
    create_subject(&a, &s, &alice);
    read_dek(&b, &s, &alice);
    assert_eq!(b.dek_cache_stats().entries, 1);
    assert!(!b.sync_caches().expect("sync"), "nothing was destroyed yet");
    assert_eq!(b.dek_cache_stats().entries, 1);
    a.shred_tenant(&s.tenant.id).expect("shred on A");
    assert!(b.sync_caches().expect("sync"), "B saw the destruction");
    assert_eq!(b.dek_cache_stats().entries, 0, "B's cached keys are gone");
    assert!(!b.sync_caches().expect("sync"), "and only once");
    // A, which destroyed them itself, has nothing to catch up on.
    assert!(!a.sync_caches().expect("sync"));
}
