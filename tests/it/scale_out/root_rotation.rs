//! Root key rotation with several nodes: they share one root key file, and what one node
//! rotates and destroys the others follow, without a key ever wrapped under a version
//! being destroyed.

use pii_vault::keyring::RootKeys;
use pii_vault::proto::v1 as pb;
use tonic::transport::Channel;
use tonic::Code;

use super::{two_nodes, two_nodes_with, RootFile};
use crate::erasure::erase;
use crate::util::{create_tenant, get, put, text, text_of, TestVault};

async fn rotate_root(node: &TestVault) -> Result<pb::RotateRootKeyResponse, tonic::Status> {
    pb::key_service_client::KeyServiceClient::new(node.channel().await)
        .rotate_root_key(pb::RotateRootKeyRequest {})
        .await
        .map(tonic::Response::into_inner)
}

async fn root_status(channel: Channel) -> pb::RootKeyStatus {
    pb::key_service_client::KeyServiceClient::new(channel)
        .get_key_status(pb::GetKeyStatusRequest {
            tenant_id: String::new(),
            count_deks: false,
        })
        .await
        .expect("key status")
        .into_inner()
        .root
        .expect("root status")
}

/// Root key versions still held (not destroyed) as `node` reports them.
async fn live_root_versions(node: &TestVault) -> (u32, Vec<u32>) {
    let root = root_status(node.channel().await).await;
    let live = root
        .versions
        .iter()
        .filter(|v| v.destroyed_at.is_none())
        .map(|v| v.version)
        .collect();
    (root.current_version, live)
}

async fn put_one(node: &TestVault, tenant: &str, subject: &str, value: &str) {
    put(
        &mut node.records().await,
        tenant,
        subject,
        vec![text("n", pb::Category::Usage, value)],
    )
    .await
    .unwrap_or_else(|e| panic!("put {tenant}/{subject}: {e:?}"));
}

async fn read_one(node: &TestVault, tenant: &str, subject: &str) -> Result<String, tonic::Status> {
    let fields = get(&mut node.records().await, tenant, subject, &["n"]).await?;
    Ok(text_of(&fields[0]).to_owned())
}

#[tokio::test]
async fn a_root_rotation_on_one_node_is_followed_by_the_other() {
    let Some((a, b)) = two_nodes("scale_out::root_rotation_followed").await else {
        return;
    };
    create_tenant(&a, "acme").await;
    put_one(&a, "acme", "u1", "before").await;
    assert_eq!(read_one(&b, "acme", "u1").await.expect("B reads"), "before");

    let rotated = rotate_root(&a).await.expect("rotate the root key on A");
    assert_eq!(rotated.current_version, 2);
    assert_eq!(rotated.destroyed_versions, vec![1]);
    let file = RootKeys::load(&a.config.root_key_file).expect("load the shared root key file");
    assert_eq!(file.version_numbers(), vec![2], "v1 left the shared file");

    // B follows: its key status shows v2 alone, from its own memory.
    assert_eq!(live_root_versions(&b).await, (2, vec![2]));
    // A tenant created through B after the rotation is wrapped under v2 (v1 is gone, so
    // anything else would not open on A).
    create_tenant(&b, "beta").await;
    put_one(&b, "beta", "u1", "on b").await;
    assert_eq!(read_one(&a, "beta", "u1").await.expect("A reads"), "on b");
    // A tenant created through A after the rotation opens on B, which never saw its KEK.
    create_tenant(&a, "gamma").await;
    put_one(&a, "gamma", "u1", "on a").await;
    assert_eq!(read_one(&b, "gamma", "u1").await.expect("B reads"), "on a");
    // And what was there before the rotation still reads through both.
    for node in [&a, &b] {
        assert_eq!(read_one(node, "acme", "u1").await.expect("read"), "before");
    }
    // B rotates next, from the file A rewrote.
    let again = rotate_root(&b).await.expect("rotate the root key on B");
    assert_eq!(
        (again.current_version, again.destroyed_versions),
        (3, vec![2])
    );
    assert_eq!(live_root_versions(&a).await, (3, vec![3]));
    for (tenant, value) in [("acme", "before"), ("beta", "on b"), ("gamma", "on a")] {
        for node in [&a, &b] {
            assert_eq!(read_one(node, tenant, "u1").await.expect("read"), value);
        }
    }
}

#[tokio::test]
async fn a_key_epoch_on_postgres_rotates_the_shared_root_key() {
    let Some((a, b)) = two_nodes("scale_out::key_epoch").await else {
        return;
    };
    create_tenant(&a, "acme").await;
    put_one(&a, "acme", "gone", "x").await;
    put_one(&a, "acme", "kept", "y").await;
    erase(a.channel().await, "acme", "gone")
        .await
        .expect("erase");
    // One node holds the key-jobs lease and runs the epoch; the other says so.
    let mut epoch = None;
    for node in [&a, &b] {
        match pb::key_service_client::KeyServiceClient::new(node.channel().await)
            .run_key_epoch(pb::RunKeyEpochRequest {})
            .await
        {
            Ok(r) => epoch = Some(r.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert!(e.message().contains("another vault node"), "{e:?}");
            }
        }
    }
    let epoch = epoch.expect("one node ran the epoch");
    assert_eq!(epoch.tenants.len(), 1, "{epoch:?}");
    assert_eq!(epoch.root_version, 2, "{epoch:?}");
    assert_eq!(epoch.root_versions_destroyed, vec![1], "{epoch:?}");
    assert_eq!(live_root_versions(&b).await, (2, vec![2]));
    assert_eq!(read_one(&b, "acme", "kept").await.expect("read"), "y");
    let err = read_one(&b, "acme", "gone").await.expect_err("erased");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

/// The fence: tenants created on both nodes while the root key is rotated again and again
/// must all open afterwards. A KEK wrapped under a version another node was destroying
/// would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_created_on_both_nodes_during_root_rotations_all_stay_readable() {
    const ROTATIONS: usize = 16;
    let Some((a, b)) = two_nodes("scale_out::root_fence").await else {
        return;
    };
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut creators = Vec::new();
    for (name, node) in [("a", a.clone()), ("b", b.clone())] {
        for w in 0..2 {
            let (node, stop) = (node.clone(), stop.clone());
            creators.push(tokio::spawn(async move {
                let mut made = Vec::new();
                let mut tenants = node.tenants().await;
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("t-{name}{w}-{i}");
                    // UNAVAILABLE (the database kept conflicting) may be retried, as a
                    // client would; anything else is a failure. A retried creation may
                    // have committed the first time.
                    let mut retried = false;
                    loop {
                        let created = tenants
                            .create_tenant(pb::CreateTenantRequest {
                                tenant_id: id.clone(),
                            })
                            .await;
                        match created {
                            Ok(_) => break,
                            Err(e) if retried && e.code() == Code::AlreadyExists => break,
                            Err(e) if e.code() == Code::Unavailable => {
                                eprintln!("create {id}: {e:?}; trying again");
                                retried = true;
                            }
                            Err(e) => panic!("create {id}: {e:?}"),
                        }
                    }
                    put_one(&node, &id, "u", &id).await;
                    made.push(id);
                    i += 1;
                }
                made
            }));
        }
    }
    for n in 0..ROTATIONS {
        let node = if n % 2 == 0 { &a } else { &b };
        let r = rotate_root(node).await.expect("rotate");
        assert_eq!(r.current_version, n as u32 + 2, "{r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut made = Vec::new();
    for c in creators {
        made.extend(c.await.expect("creator"));
    }
    assert!(made.len() >= 20, "only {} tenants were created", made.len());
    for id in &made {
        for node in [&a, &b] {
            let value = read_one(node, id, "u")
                .await
                .unwrap_or_else(|e| panic!("{id} after the rotations: {e:?}"));
            assert_eq!(&value, id);
        }
    }
    let file = RootKeys::load(&a.config.root_key_file).expect("root key file");
    assert_eq!(file.version_numbers(), vec![ROTATIONS as u32 + 1]);
}

#[tokio::test]
async fn a_node_with_its_own_copy_of_the_root_key_file_refuses_once_another_rotates() {
    let Some((a, b, _)) = two_nodes_with("scale_out::root_copied", RootFile::Copied, |_| {}).await
    else {
        return;
    };
    create_tenant(&a, "acme").await;
    put_one(&a, "acme", "u1", "x").await;
    rotate_root(&a).await.expect("rotate on A");
    // B cannot wrap: the store says v2 is current, and B's file does not have it.
    let err = b
        .tenants()
        .await
        .create_tenant(pb::CreateTenantRequest {
            tenant_id: "beta".into(),
        })
        .await
        .expect_err("B has no v2");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("same root key file"),
        "the message says what to fix: {err:?}"
    );
    // Nor open what A wrapped under v2 (B never cached acme's KEK).
    let err = read_one(&b, "acme", "u1").await.expect_err("B has no v2");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    // Nothing was lost: A serves everything, and the refused tenant does not exist.
    assert_eq!(read_one(&a, "acme", "u1").await.expect("A reads"), "x");
    let err = read_one(&a, "beta", "u1")
        .await
        .expect_err("beta was not created");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}
